"""Recommendations: fit the memory, say when routing is synthetic, refuse what cannot fit."""

from __future__ import annotations

import json

import pytest

from pregate.cli import main
from pregate.simulator.recommend import recommend
from pregate.simulator.synthetic import make_trace


def test_known_shape_uses_synthetic_routing_and_fits(capsys):
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
    for words in ("run: speculation", "tokens/s", "references: all experts resident", "perfect prediction",
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
