"""Recommendations: fit the memory, say when routing is synthetic, refuse what cannot fit."""

from __future__ import annotations

import json

import pytest

from pregate.cli import main
from pregate.simulator.recommend import recommend
from pregate.simulator.synthetic import make_trace


def test_known_shape_uses_synthetic_routing_and_fits(capsys, monkeypatch):
    from pregate.simulator import synthetic

    real = synthetic.make_trace

    def fewer_tokens(folder, **kw):
        """The same shape (layers, experts, top-k, ahead) over fewer tokens: what is checked is the answer's
        form and memory fit, not its figures; the full-size trace took 19 s of a loaded run."""
        return real(folder, **{**kw, "seqs": 4, "prompt_len": 4, "new_tokens": 8})

    monkeypatch.setattr(synthetic, "make_trace", fewer_tokens)
    assert main(["recommend", "--model", "switch-base-8", "--gpu", "t4", "--vram", "1.5", "--workers", "1",
                 "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["synthetic"] and "SYNTHETIC" in rec["source_note"]
    m, best = rec["memory"], rec["best"]
    assert 0 < m["cache_experts"] < m["total_experts"]
    assert best["cache_capacity_experts"] <= m["cache_experts"]
    assert best["peak_gpu_bytes"] <= m["vram_bytes"] - m["margin_bytes"]
    assert best["ratio_to_resident"] >= 1.0 and best["tokens_per_s"] > 0
    assert best["speculation"] != "oracle" and best["cache_policy"] != "belady"


def test_trace_answer_is_readable(tmp_path, capsys):
    trace = make_trace(tmp_path / "t", seqs=2, prompt_len=4, new_tokens=6, layers=3, experts=8, top_k=1)
    # the synthetic meta has 768x3072 fp32 experts (18.9 MB): 0.6 GB leaves room for a few
    assert main(["recommend", "--model", str(trace), "--gpu", "rtx3090", "--vram", "0.6", "--margin", "0.1",
                 "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" not in out and f"routing recorded in {trace}" in out
    for words in ("answer: a ", "run: ", "command: pregate execute", "tokens/s", "references: all experts resident", "perfect prediction",
                  "lower bound"):
        assert words in out


def test_everything_fits_means_resident(tmp_path):
    trace = make_trace(tmp_path / "t", seqs=2, prompt_len=2, new_tokens=4, layers=2, experts=4)
    rec = recommend(str(trace), "rtx3090", workers=1)
    assert rec.all_resident and rec.best["buffering"] == "resident"


def test_too_small_and_unknown_are_one_line_errors(capsys):
    assert main(["recommend", "--model", "switch-base-8", "--gpu", "t4", "--vram", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not fit" in err
    assert main(["recommend", "--model", "no-such-model-xyz", "--gpu", "t4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pregate models" in err
    assert main(["recommend", "--model", "switch-base-8", "--gpu", "gtx480"]) == 2
    assert "unknown profile" in capsys.readouterr().err


def test_placement_families_come_from_the_registry():
    from pregate.simulator.recommend import GPU_CACHE, HYBRID, STATIC, placement_family, placements

    assert placement_family("cache") == GPU_CACHE and placement_family("double_buffer") == GPU_CACHE
    assert placement_family("static-layers") == STATIC and placement_family("static-hot") == STATIC
    assert placement_family("cpu_compute") == HYBRID and placement_family("cpu-or-fetch") == HYBRID
    assert placement_family("resident") is None
    kinds = placements()
    assert set(kinds[STATIC]) == {"static-layers", "static-hot"} and set(kinds[HYBRID]) == {"cpu_compute", "cpu-or-fetch"}


def test_llamacpp_flags_name_the_cpu_layers():
    from pregate.simulator.llamacpp import llamacpp_placement, override_regex
    from pregate.traces import StackMeta

    from conftest import make_meta

    meta = make_meta(stacks={"decoder": StackMeta(moe_layers=32, experts=8, top_k=2)})
    flags = llamacpp_placement(meta, 28 * 8 + 5)  # 28 whole layers fit; the 5 spare experts place nothing
    assert (flags.cpu_layers, flags.gpu_layers, flags.blocks) == (4, 28, (0, 1, 2, 3))
    assert flags.n_cpu_moe == "-ngl 99 --n-cpu-moe 4"
    assert flags.override == "-ngl 99 -ot 'blk\\.(0|1|2|3)\\.ffn_.*_exps\\.=CPU'"
    assert "not a prediction" in flags.note
    assert llamacpp_placement(meta, 32 * 8).cpu_layers == 0
    # MoE layers in every other block (Switch-like): --n-cpu-moe would name other blocks, -ot names these
    odd = make_meta(stacks={"decoder": StackMeta(moe_layers=4, experts=8, top_k=1, block_indices=[1, 3, 5, 7])})
    flags = llamacpp_placement(odd, 16)
    assert flags.blocks == (1, 3) and flags.n_cpu_moe == "" and override_regex([1, 3]) in flags.override
    enc = make_meta(stacks={"encoder": StackMeta(moe_layers=2, experts=8, top_k=1),
                            "decoder": StackMeta(moe_layers=2, experts=8, top_k=1)})
    assert llamacpp_placement(enc, 8) is None  # llama.cpp runs decoder-only models


@pytest.mark.slow
def test_answer_names_placement_families_command_and_llamacpp(tmp_path):
    from pregate.simulator.recommend import format_recommendation
    from pregate.simulator.synthetic import like_trace

    trace = like_trace(tmp_path / "mx", "mixtral-8x7b", seqs=2, decode_tokens=4)
    rec = recommend(str(trace), "rtx3090", workers=1, host="ddr4-3200-2ch")
    assert rec.host == "ddr4-3200-2ch"
    families = {f["family"] for f in rec.families}
    assert families == {"GPU expert cache with prefetch", "static CPU placement", "hybrid (GPU cache + CPU compute)"}
    best = max(f["tokens_per_s"] for f in rec.families)
    assert rec.best["tokens_per_s"] == pytest.approx(best, rel=0.006)  # the winner is the best family's best
    assert all(f["winner_speedup"] >= 0.99 for f in rec.families)
    assert rec.execute.startswith(f"pregate execute --trace {trace} --device cuda")
    assert rec.llamacpp["n_cpu_moe"].startswith("-ngl 99 --n-cpu-moe ")
    text = format_recommendation(rec)
    assert "answer: a " in text and "llama.cpp:" in text and "not a prediction of llama.cpp" in text
