"""Importing logs with the defects real ones have, each checked cell by cell against the routing
the generated log was made from (tests/messy_logs.py)."""

from __future__ import annotations

import polars as pl
import pytest

from messy_logs import dense_layer_folders, execution_order_log, renumbered_decode_log
from pregate.cli import main
from pregate.traces import open_trace, validate_trace

KEY = ["--seq", "dataset,problem_id", "--pos", "token_idx"]


def run_import(capsys, *args):
    rc = main(["import", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def imported(path) -> tuple[dict, list]:
    """(label, pos, layer) -> row, and the labels by sequence id, of an imported trace."""
    trace = validate_trace(path)
    labels = trace.meta.extra["imported"].get("sequences")
    frame = trace.collect()
    rows = {}
    for r in frame.iter_rows(named=True):
        label = labels[r["seq"]] if labels else str(r["seq"])
        rows[(label, r["pos"], r["layer"])] = r
    return rows, labels


def assert_true_cells(rows: dict, truth, *, tokens: bool = True) -> None:
    """Every kept row holds exactly the routing of its (sequence, position, layer)."""
    for key, r in rows.items():
        ids, probs, token = truth.cells[key]
        assert r["experts"] == ids, key
        if probs:
            assert r["probs"] == pytest.approx(probs, abs=2e-3), key
        if tokens:
            assert r["token"] == token, key


def test_renumbered_log_keeps_no_shifted_layer(tmp_path, capsys):
    """The records after a lost one are renumbered: keep-aligned cuts each such layer where the
    loss is (found by the token ids) instead of keeping it one position early."""
    truth = renumbered_decode_log(tmp_path / "mixtral_decode.jsonl")
    rc, out, err = run_import(capsys, "--format", "jsonl", tmp_path / "mixtral_decode.jsonl", "-o", tmp_path / "t",
                              "--model", "mixtral-8x7b", *KEY, "--token", "token_id", "--on-mismatch", "keep-aligned",
                              "--prob-bits", 23)
    assert rc == 0, err
    rows, labels = imported(tmp_path / "t")
    assert sorted(labels) == ["gsm8k/0", "gsm8k/1", "humaneval/0", "humaneval/1"]
    assert_true_cells(rows, truth)
    # Tokens present in every layer once the damaged layers are cut: those before each sequence's first loss.
    for label, n in truth.lengths.items():
        first_loss = min(p for (lab, _), p in truth.lost.items() if lab == label)
        kept = {pos for (lab, pos, _) in rows if lab == label}
        assert kept == set(range(first_loss)), label
    damaged = len(truth.lost)
    assert f"cut       {damaged} (sequence, layer) cell(s) that lost records" in out
    assert "0 cell(s) whole" in out and "no layer is kept shifted" in out
    records_cut = sum(truth.lengths[lab] - 1 - p for (lab, _), p in truth.lost.items())
    assert f"{records_cut} record(s) from the first gap on" in out
    assert "seq gsm8k/0 layer" in out


def test_renumbered_two_layer_log_locates_the_shift_against_the_intact_layer(tmp_path, capsys):
    """With two layers a shifted and an intact one tie on every token: the intact one decides."""
    truth = renumbered_decode_log(tmp_path / "log.jsonl", layers=2)
    rc, out, err = run_import(capsys, "--format", "jsonl", tmp_path / "log.jsonl", "-o", tmp_path / "t", *KEY,
                              "--token", "token_id", "--on-mismatch", "keep-aligned", "--on-missing", "hole",
                              "--prob-bits", 23)
    assert rc == 0, err
    rows, _ = imported(tmp_path / "t")
    assert_true_cells(rows, truth)
    expected = {key for key in truth.cells if not ((key[0], key[2]) in truth.lost and key[1] >= truth.lost[(key[0], key[2])])}
    assert set(rows) == expected


def test_renumbered_log_with_holes(tmp_path, capsys):
    truth = renumbered_decode_log(tmp_path / "log.jsonl")
    rc, out, err = run_import(capsys, "--format", "jsonl", tmp_path / "log.jsonl", "-o", tmp_path / "t",
                              "--model", "mixtral-8x7b", *KEY, "--token", "token_id",
                              "--on-mismatch", "keep-aligned", "--on-missing", "hole", "--prob-bits", 23)
    assert rc == 0, err
    rows, _ = imported(tmp_path / "t")
    assert_true_cells(rows, truth)
    expected = {key for key in truth.cells if not ((key[0], key[2]) in truth.lost and key[1] >= truth.lost[(key[0], key[2])])}
    assert set(rows) == expected
    holes = sum(truth.lengths[lab] - p for (lab, _), p in truth.lost.items())
    assert f"holes     {holes} (token, layer) pair(s)" in out
    meta = open_trace(tmp_path / "t").meta
    assert meta.extra["imported"]["holes"] == holes and meta.extra["imported"]["seq_fields"] == ["dataset", "problem_id"]


def test_renumbered_log_without_token_ids_cuts_the_damaged_cells_whole(tmp_path, capsys):
    truth = renumbered_decode_log(tmp_path / "log.jsonl", with_tokens=False)
    rc, out, err = run_import(capsys, "--format", "jsonl", tmp_path / "log.jsonl", "-o", tmp_path / "t",
                              "--model", "mixtral-8x7b", *KEY, "--on-mismatch", "keep-aligned", "--on-missing", "hole")
    assert rc == 0, err
    rows, _ = imported(tmp_path / "t")
    assert_true_cells(rows, truth, tokens=False)
    assert set(rows) == {key for key in truth.cells if (key[0], key[2]) not in truth.lost}
    assert f"{len(truth.lost)} cell(s) whole (gap not located)" in out
    # Without holes nothing would be left: every sequence has a damaged layer.
    rc, _, err = run_import(capsys, "--format", "jsonl", tmp_path / "log.jsonl", "-o", tmp_path / "u",
                            "--model", "mixtral-8x7b", *KEY, "--on-mismatch", "keep-aligned")
    assert rc == 2 and "--on-missing hole" in err and len(err.strip().splitlines()) == 1


def test_renumbered_log_errors_name_the_sources_keys(tmp_path, capsys):
    renumbered_decode_log(tmp_path / "log.jsonl")
    args = ["--format", "jsonl", tmp_path / "log.jsonl", "--model", "mixtral-8x7b", "--token", "token_id"]
    rc, _, err = run_import(capsys, *args, "-o", tmp_path / "a", *KEY)
    assert rc == 2 and "seq gsm8k/0 (decoder): layer" in err and "(in log.jsonl)" in err and "--on-mismatch" in err
    rc, _, err = run_import(capsys, *args, "-o", tmp_path / "b", *KEY, "--on-mismatch", "drop")
    assert rc == 2 and "every sequence (4) has a layer that lost records" in err and "keep-aligned" in err
    # One field of the key alone: the two datasets collide, and the hint names the composite key,
    # not --on-duplicate (which would merge different prompts).
    rc, _, err = run_import(capsys, *args, "-o", tmp_path / "c", "--seq", "problem_id", "--pos", "token_idx")
    assert rc == 2 and "differ in field(s) dataset" in err and "--seq dataset,problem_id" in err
    # Merging them anyway: with token ids the merge is refused (its tokens disagree) ...
    merge = ["--seq", "problem_id", "--pos", "token_idx", "--on-duplicate", "first", "--on-mismatch", "keep-aligned",
             "--on-missing", "hole"]
    rc, _, err = run_import(capsys, *args, "-o", tmp_path / "d", *merge)
    assert rc == 2 and "disagree about its token id" in err
    # ... and without them it is flagged in the summary, not silent.
    rc, out, err = run_import(capsys, "--format", "jsonl", tmp_path / "log.jsonl", "-o", tmp_path / "e", *merge)
    assert rc == 0, err
    assert "--on-duplicate first merged" in out and "--seq dataset,problem_id" in out


def test_token_index_mapped_as_token_is_flagged(tmp_path, capsys):
    renumbered_decode_log(tmp_path / "log.jsonl", layers=4)
    rc, out, _ = run_import(capsys, "--format", "jsonl", tmp_path / "log.jsonl", "-o", tmp_path / "t",
                            "--seq", "dataset,problem_id", "--token", "token_idx", "--on-mismatch", "keep-aligned",
                            "--on-missing", "hole")
    assert rc == 0
    assert "--token token_idx: its values count 0, 1, 2" in out and "--pos token_idx" in out


def test_dense_layer_folders_with_offset_and_row_blocks(tmp_path, capsys):
    truth = dense_layer_folders(tmp_path / "flame")
    files = sorted((tmp_path / "flame").glob("Layer_*/*.csv"))
    rc, out, err = run_import(capsys, "--format", "csv-dense", *files, "-o", tmp_path / "t", "--top-k", "8",
                              "--layer-from-path", r"Layer_(\d+)", "--layer-offset", "2", "--rows-per-seq", "64")
    assert rc == 0, err
    rows, _ = imported(tmp_path / "t")
    assert set(rows) == set(truth.cells)
    assert_true_cells(rows, truth, tokens=False)
    meta = open_trace(tmp_path / "t").meta
    assert meta.stacks["decoder"].moe_layers == 8 and meta.stacks["decoder"].experts == 64
    assert meta.stacks["decoder"].block_indices == truth.extra["blocks"]
    assert "3 sequence(s), 192 token(s)" in out and "blocks of 64 rows" in out
    # The same with an explicit map.
    mapping = ",".join(f"{b}:{i}" for i, b in enumerate(truth.extra["blocks"]))
    rc, _, err = run_import(capsys, "--format", "csv-dense", *files, "-o", tmp_path / "m", "--top-k", "8",
                            "--layer-from-path", r"Layer_(\d+)", "--layer-map", mapping, "--rows-per-seq", "64")
    assert rc == 0, err
    assert imported(tmp_path / "m")[0].keys() == rows.keys()


def test_dense_layer_numbers_not_from_zero_are_flagged(tmp_path, capsys):
    dense_layer_folders(tmp_path / "flame", layers=2, experts=8, rows_per_seq=4, seqs=1)
    files = sorted((tmp_path / "flame").glob("Layer_*/*.csv"))
    rc, out, _ = run_import(capsys, "--format", "csv-dense", *files, "-o", tmp_path / "t", "--top-k", "2",
                            "--layer-from-path", r"Layer_(\d+)")
    assert rc == 0
    assert "records for 2 of its 4 MoE layers" in out and "--layer-offset 2" in out
    rc, _, err = run_import(capsys, "--format", "csv-dense", *files, "-o", tmp_path / "u", "--top-k", "2",
                            "--layer-from-path", r"Layer_(\d+)", "--layer-offset", "3")
    assert rc == 2 and "minus --layer-offset 3 is negative" in err


def test_execution_order_log(tmp_path, capsys):
    truth = execution_order_log(tmp_path / "hook.jsonl")
    rc, out, err = run_import(capsys, "--format", "jsonl", tmp_path / "hook.jsonl", "-o", tmp_path / "t",
                              "--seq", "request", "--token", "token_id", "--order", "execution",
                              "--on-missing", "hole", "--prob-bits", 23)
    assert rc == 0, err
    rows, labels = imported(tmp_path / "t")
    assert_true_cells(rows, truth)
    # The lost decode records are holes; the lost prefill record is located by the token ids,
    # so only that layer's prompt records from it on are cut.
    expected = {key for key in truth.cells
                if not ((key[0], key[2]) in truth.lost and truth.lost[(key[0], key[2])] <= key[1] < truth.prompt[key[0]]
                        or (key[0], key[1], key[2]) in {(r, p, layer) for (r, layer), p in truth.lost.items()})}
    assert set(rows) == expected
    for (label, pos, _), r in rows.items():
        prompt = truth.prompt[label]
        assert r["phase"] == ("prefill" if pos < prompt else "decode")
        assert r["step"] == (0 if pos < prompt else pos - prompt + 1)
    assert "execution order: 10 forward pass(es)" in out


def test_hole_trace_simulates_layer_steps_without_the_token(tmp_path, capsys):
    """A hole is a layer step without that token: fewer tokens through it, or no step at all."""
    from pregate.simulator.api import Simulation
    from pregate.simulator.settings import Settings
    from pregate.simulator.stream import build_stream

    execution_order_log(tmp_path / "hook.jsonl")
    rc, _, err = run_import(capsys, "--format", "jsonl", tmp_path / "hook.jsonl", "-o", tmp_path / "t",
                            "--seq", "request", "--token", "token_id", "--order", "execution", "--on-missing", "hole",
                            "--num-experts", "8", "--d-model", "64", "--d-ff", "128", "--activation", "silu-gated")
    assert rc == 0, err
    trace = open_trace(tmp_path / "t")
    frame = trace.collect()
    stream = build_stream(trace, batch_size=2)
    # Both requests in one batch: each (step, layer) is one layer step with one token per row.
    per_step = frame.group_by("step", "layer").len().sort("step", "layer")
    assert stream.n_layer_steps == per_step.height
    assert stream.ls_tokens.tolist() == per_step["len"].to_list()
    assert 1 in stream.ls_tokens.tolist()  # a decode step where one request's record was lost
    result = Simulation(trace, Settings(batch_size=2, cache="25%")).replay()
    assert result is not None
