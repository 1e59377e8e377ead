"""A trace that does not know the size of its experts is refused by simulate, sweep and recommend
(priced as zero bytes it would report nothing moved and the bound reached)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pregate.cli import main

FIX = Path(__file__).parent / "fixtures" / "import"
MAP = ["--seq", "problem_id", "--pos", "token_idx", "--probs", "gating_probs", "--phase", "stage"]


@pytest.fixture()
def unsized(tmp_path, capsys):
    out = tmp_path / "unsized"
    assert main(["import", "--format", "jsonl", str(FIX / "clean.jsonl"), "-o", str(out), *MAP]) == 0
    assert "expert size unknown" in capsys.readouterr().out
    return out


def one_line_refusal(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "has no expert size" in err[0] and "--model-config FILE" in err[0] and "--price-as MODEL" in err[0]
    return err[0]


def test_simulate_sweep_recommend_refuse_an_unsized_trace(unsized, tmp_path, capsys):
    one_line_refusal(capsys, ["simulate", str(unsized), "--no-bounds"])
    one_line_refusal(capsys, ["sweep", "--trace", str(unsized), "--cache", "25%", "-o", str(tmp_path / "res"),
                              "--workers", "1", "--quiet"])
    one_line_refusal(capsys, ["recommend", "--model", str(unsized), "--workers", "1"])


def test_sized_import_simulates(tmp_path, capsys):
    out = tmp_path / "sized"
    assert main(["import", "--format", "jsonl", str(FIX / "clean.jsonl"), "-o", str(out), *MAP,
                 "--model-config", str(FIX / "tiny-moe.toml")]) == 0
    capsys.readouterr()
    assert main(["simulate", str(out), "--no-bounds", "--replay-only"]) == 0
    assert "bytes" in capsys.readouterr().out


def test_helper_accepts_metadata_that_knows_its_expert_bytes():
    from pregate.simulator.pricing import expert_size_known
    from pregate.traces import StackMeta, TraceMeta

    base = dict(model_id="m", family="f", stacks={"decoder": StackMeta(2, 4, 1)}, d_model=0, d_ff=0,
                activation="relu", gating="top1-softmax", dense_bytes_per_layer=0)
    assert not expert_size_known(TraceMeta(**base, expert_params=0, bytes_per_expert={}))
    assert expert_size_known(TraceMeta(**base, expert_params=0, bytes_per_expert={"float32": 4096}))
    assert expert_size_known(TraceMeta(**base, expert_params=1024, bytes_per_expert={}))
