"""pregate import --format csv-dense: router scores per expert column, one file per layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pregate.cli import main
from pregate.traces import open_trace, validate_trace

FIX = Path(__file__).parent / "fixtures" / "import"


def run_import(capsys, *args):
    rc = main(["import", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def expected(layer: int, renorm: bool = False, as_probs: bool = False) -> dict:
    frame = pl.read_csv(FIX / "dense" / f"layer{layer}.csv")
    scores = frame.select("e0", "e1", "e2", "e3").to_numpy()
    probs = scores if as_probs else np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    out = {}
    for i, (seq, pos) in enumerate(frame.select("request", "pos").rows()):
        top = np.argsort(-scores[i], kind="stable")[:2]
        p = probs[i, top]
        out[(seq, pos)] = (top.tolist(), (p / p.sum() if renorm else p).tolist())
    return out


def test_dense_scores_softmax_top_k(tmp_path, capsys):
    rc, stdout, err = run_import(capsys, "--format", "csv-dense", FIX / "dense", "-o", tmp_path / "t",
                                 "--seq", "request", "--model-config", FIX / "tiny-moe.toml", "--prob-bits", 23)
    assert rc == 0, err
    assert "read      12 record(s) from 2 csv-dense file(s)" in stdout
    assert "top-2 of 4 scores per token; probabilities: softmax over the 4 scores" in stdout
    trace = validate_trace(tmp_path / "t")
    frame = open_trace(tmp_path / "t").collect()
    assert frame.height == 12 and set(frame["phase"]) == {"decode"}
    for layer in (0, 1):
        want = expected(layer)
        rows = frame.filter(pl.col("layer") == layer)
        for row in rows.iter_rows(named=True):
            ids, probs = want[(row["seq"], row["pos"])]
            assert row["experts"] == ids
            assert row["probs"] == pytest.approx(probs, rel=1e-5)
            assert row["token"] == 200 + row["pos"]
    assert trace.meta.stacks["decoder"].experts == 4


def test_dense_renormalising_gating_and_probabilities(tmp_path, capsys):
    rc, stdout, _ = run_import(capsys, "--format", "csv-dense", FIX / "dense" / "layer1.csv", "-o", tmp_path / "t",
                               "--seq", "request", "--top-k", "2", "--gating", "topk-softmax-renorm", "--prob-bits", 23)
    assert rc == 0 and "renormalised over the top-k" in stdout
    frame = open_trace(tmp_path / "t").collect()
    assert set(frame["layer"]) == {1}
    want = expected(1, renorm=True)
    for row in frame.iter_rows(named=True):
        assert row["probs"] == pytest.approx(want[(row["seq"], row["pos"])][1], rel=1e-5)
    # Logits are not probabilities.
    rc, _, err = run_import(capsys, "--format", "csv-dense", FIX / "dense", "-o", tmp_path / "u",
                            "--seq", "request", "--top-k", "2", "--scores-are-probs")
    assert rc == 2 and "layer0.csv: line 2: score outside [0, 1]" in err


def test_dense_scores_that_are_probabilities_and_a_layer_column(tmp_path, capsys):
    src = tmp_path / "gates.csv"
    src.write_text("seq,layer,expert_0,expert_1,expert_2\n0,0,0.2,0.5,0.3\n0,1,0.6,0.1,0.3\n1,0,0.1,0.1,0.8\n1,1,0.3,0.3,0.4\n")
    rc, stdout, err = run_import(capsys, "--format", "csv-dense", src, "-o", tmp_path / "t", "--top-k", "1",
                                 "--scores-are-probs", "--prob-bits", 23)
    assert rc == 0, err
    frame = open_trace(tmp_path / "t").collect()
    assert frame["experts"].to_list() == [[1], [0], [2], [2]]
    assert [p[0] for p in frame["probs"].to_list()] == pytest.approx([0.5, 0.6, 0.8, 0.4])
    validate_trace(tmp_path / "t")


def test_dense_bad_inputs(tmp_path, capsys):
    rc, _, err = run_import(capsys, "--format", "csv-dense", FIX / "dense_bad", "-o", tmp_path / "t", "--top-k", "2")
    assert rc == 2 and err.count("\n") == 1
    assert "layer0.csv: line 3: score 'oops' in column 'e1' is not a number" in err
    rc, _, err = run_import(capsys, "--format", "csv-dense", FIX / "dense", "-o", tmp_path / "t")
    assert rc == 2 and "csv-dense needs the model's top-k" in err
    rc, _, err = run_import(capsys, "--format", "csv-dense", FIX / "dense", "-o", tmp_path / "t", "--top-k", "2",
                            "--num-experts", "8")
    assert rc == 2 and "4 expert columns, but the model has 8 experts" in err
    gap = tmp_path / "layer0.csv"
    gap.write_text("e1,e2\n0.1,0.2\n")
    rc, _, err = run_import(capsys, "--format", "csv-dense", gap, "-o", tmp_path / "t", "--top-k", "1")
    assert rc == 2 and "expert columns must be numbered 0..1" in err


def test_dense_mismatch_between_layer_files(tmp_path, capsys):
    (tmp_path / "layer0.csv").write_text("seq,e0,e1\n0,1,0\n0,0,1\n1,1,0\n")
    (tmp_path / "layer1.csv").write_text("seq,e0,e1\n0,1,0\n1,0,1\n1,1,0\n")
    args = ["--format", "csv-dense", tmp_path / "layer0.csv", tmp_path / "layer1.csv", "--top-k", "1"]
    rc, _, err = run_import(capsys, *args, "-o", tmp_path / "a")
    assert rc == 2 and "2 sequence(s) have layers whose tokens disagree" in err
    assert "seq 0 (decoder): layer 1 has 1 tokens, other layers 2" in err
    # Without positions or token ids a short layer's lost row may be any of them: keep-aligned
    # trusts none of that layer's rows for the sequence (it used to keep row 0 whatever it was).
    rc, _, err = run_import(capsys, *args, "-o", tmp_path / "b", "--on-mismatch", "keep-aligned")
    assert rc == 2 and "nothing is left once the layers that lost records are cut" in err and "--on-missing hole" in err
    rc, stdout, _ = run_import(capsys, *args, "-o", tmp_path / "b", "--on-mismatch", "keep-aligned",
                               "--on-missing", "hole")
    assert rc == 0 and "keep-aligned without a position field" in stdout
    assert "2 cell(s) whole (gap not located)" in stdout and "holes     4 (token, layer) pair(s)" in stdout
    frame = open_trace(tmp_path / "b").collect()
    assert frame.select("seq", "pos", "layer").rows() == [(0, 0, 0), (0, 1, 0), (1, 0, 1), (1, 1, 1)]
    rc, _, err = run_import(capsys, *args, "-o", tmp_path / "c", "--on-mismatch", "drop")
    assert rc == 2 and "--on-mismatch drop leaves nothing" in err and "keep-aligned" in err
