"""Pricing a trace's routing at another model's size, and the over-memory flag."""

from __future__ import annotations

import json

import pytest

from pregate.cli import main
from pregate.simulator import sweep as sw
from pregate.simulator.api import Simulation
from pregate.simulator.pricing import PricingError, priced_meta, resolve_target
from pregate.simulator.settings import Settings
from pregate.simulator.synthetic import make_trace
from pregate.traces import open_trace
from pregate.traces.importers.model_shapes import bytes_per_dtype, expert_params


@pytest.fixture(scope="module")
def switch_like(tmp_path_factory):
    """A decoder-only trace of switch-base-8's decoder topology (6 MoE layers x 8 experts, top-1)."""
    root = tmp_path_factory.mktemp("pricing")
    return make_trace(root / "sw", seqs=3, prompt_len=4, new_tokens=8, layers=6, experts=8, top_k=1, seed=1)


@pytest.fixture(scope="module")
def mixtral_like(tmp_path_factory):
    """Mixtral-8x7b's routing topology (32 MoE layers x 8 experts, top-2), a few tokens."""
    root = tmp_path_factory.mktemp("pricing-mx")
    return make_trace(root / "mx", seqs=2, prompt_len=3, new_tokens=4, layers=32, experts=8, top_k=2, seed=3)


def test_mismatched_topology_is_refused_in_one_line(switch_like, capsys):
    with pytest.raises(PricingError, match="MoE layers 6 vs 32; top-k 1 vs 2"):
        Simulation(switch_like, Settings(price_as="mixtral-8x7b"))
    assert main(["simulate", str(switch_like), "--price-as", "switch-base-64"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "experts per layer 8 vs 64" in err
    assert main(["simulate", str(switch_like), "--price-as", "no-such-model"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown model" in err


def test_sweep_refuses_a_mismatch_before_any_work(switch_like, tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["sweep", "--trace", str(switch_like), "--price-as", "switch-base-8,mixtral-8x7b", "-o", str(out),
                 "--workers", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot price" in err and "mixtral-8x7b" in err
    assert not sw.chunk_files(out)


def test_priced_bytes_moved_are_misses_times_the_targets_expert_bytes(switch_like):
    own = Simulation(switch_like, Settings(cache="10%")).run(bounds=False).summary
    for dtype in ("bfloat16", "float32"):
        s = Simulation(switch_like, Settings(cache="10%", price_as="switch-base-8", dtype=dtype)).run(bounds=False).summary
        target = bytes_per_dtype(expert_params(768, 3072, "relu"))[dtype]
        assert s["misses"] > 0 and s["prefetches"] == 0
        assert s["bytes_moved"] == s["misses"] * target
        # the routing is the trace's: the same requests, hits and misses as unpriced
        assert (s["requests"], s["hits"] + s["late_hits"], s["misses"]) == (
            own["requests"], own["hits"] + own["late_hits"], own["misses"])
        assert s["pricing"].startswith("routing of ") and "priced as switch-base-8" in s["pricing"]
        assert "encoder not in the trace" in s["pricing"]


def test_priced_meta_takes_every_size_from_the_target(mixtral_like):
    meta = open_trace(mixtral_like).meta
    priced = priced_meta(meta, resolve_target("mixtral-8x7b"))
    assert (priced.d_model, priced.d_ff, priced.activation, priced.dtype) == (4096, 14336, "silu-gated", "bfloat16")
    assert priced.expert_bytes("bfloat16") == 3 * 4096 * 14336 * 2
    assert priced.dense_bytes_per_layer == 41_984_000 * 2
    assert priced.stacks["decoder"].moe_layers == 32 and priced.extra["priced_stacks_absent"] == []


def test_model_config_file_prices_and_is_checked(switch_like, tmp_path, capsys):
    good = tmp_path / "mine.toml"
    good.write_text('name = "my-moe"\nexperts = 8\ntop_k = 1\nmoe_layers = 6\nd_model = 1024\nd_ff = 4096\n'
                    'activation = "gelu"\ndense_params = 4000000\ndtype = "bfloat16"\n')
    out = tmp_path / "s.json"
    assert main(["simulate", str(switch_like), "--model-config", str(good), "--no-bounds", "--json", str(out)]) == 0
    assert "routing of synthetic, priced as my-moe" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["priced_as"] == "my-moe" and data["pricing"] == "routing of synthetic, priced as my-moe"
    assert data["settings"]["price_as"] == str(good)
    bad = tmp_path / "bad.toml"
    bad.write_text("experts = 16\ntop_k = 1\nmoe_layers = 6\nd_model = 64\nd_ff = 128\n")
    assert main(["simulate", str(switch_like), "--model-config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "experts per layer 8 vs 16" in err
    partial = tmp_path / "partial.json"
    partial.write_text('{"d_model": 64}')
    assert main(["simulate", str(switch_like), "--model-config", str(partial)]) == 2
    assert "needs d_ff, experts, top_k" in capsys.readouterr().err
    assert main(["simulate", str(switch_like), "--model-config", str(good), "--price-as", "switch-base-8"]) == 2
    assert "not both" in capsys.readouterr().err


def test_sweep_keys_and_rows_carry_the_pricing(switch_like, tmp_path):
    spec = sw.SweepSpec([str(switch_like)], {"price_as": ["", "switch-base-8"], "cache": ["25%"]}, source="t")
    plan = sw.plan_sweep(spec)
    assert len({p.key for p in plan.points}) == 2
    sw.run_sweep(plan, tmp_path / "res", workers=1, progress=False)
    frame = sw.read_results(tmp_path / "res").sort("price_as")
    assert frame["pricing"].to_list() == ["routing of synthetic, priced as synthetic (the trace's own sizes)",
                                          "routing of synthetic, priced as switch-base-8 (encoder not in the trace, "
                                          "not priced)"]
    assert frame["priced_as"].to_list() == ["synthetic", "switch-base-8"]


def test_over_memory_flag_is_exactly_peak_plus_margin_over_the_gpu(mixtral_like):
    """rtx3090: 24 GiB; mixtral-8x7b: 2.69 GB of dense weights, 352 MB per bf16 expert, margin 0.5 GB + 8%."""
    seen = set()
    for cache in ("20", "57", "58", "59", "60", "100%"):
        s = Simulation(mixtral_like, Settings(cache=cache, price_as="mixtral-8x7b")).run(bounds=False).summary
        expected = s["peak_gpu_bytes"] + s["working_margin_bytes"] > s["gpu_memory_bytes"]
        assert s["over_memory"] is expected and s["fits_gpu_memory"] is (not expected)
        assert s["gpu_memory_bytes"] == 24 * 2**30
        assert s["working_margin_bytes"] == int(500_000_000 + 0.08 * 24 * 2**30)
        seen.add(expected)
    assert seen == {True, False}


def test_over_memory_points_are_marked_and_never_best(mixtral_like, tmp_path, capsys):
    from pregate.simulator.ranking import fitting, format_ranking, rank

    spec = sw.SweepSpec([str(mixtral_like)], {"price_as": ["mixtral-8x7b"], "cache": ["20", "100"],
                                              "compression": ["none"]}, source="t")
    sw.run_sweep(spec, tmp_path / "res", workers=1, progress=False)
    frame = sw.read_results(tmp_path / "res")
    ranked = rank(frame)
    assert ranked["over_memory"].to_list() == [False, True]  # the bigger cache is faster but does not fit
    assert ranked["tokens_per_s"][1] > ranked["tokens_per_s"][0]
    assert fitting(ranked).height == 1
    assert rank(frame, include_over_memory=True)["over_memory"][0]
    text = format_ranking(ranked)
    assert text.count("OVER MEMORY") >= 2  # the row and the legend
    assert "routing of synthetic, priced as mixtral-8x7b" in text
    out = tmp_path / "rep"
    assert main(["report", str(tmp_path / "res"), "-o", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert '<td class="over">OVER MEMORY</td>' in html and "never called best" in html
