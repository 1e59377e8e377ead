"""pregate import --format jsonl: clean and defective logs, the shape, the cleaning modes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from pregate.cli import main
from pregate.traces import open_trace, validate_trace

FIX = Path(__file__).parent / "fixtures" / "import"
MAP = ["--seq", "problem_id", "--pos", "token_idx", "--token", "token_id", "--probs", "gating_probs", "--phase", "stage"]


def run_import(capsys, *args):
    rc = main(["import", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def source_rows(path: Path) -> dict:
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows[(r["problem_id"], r["token_idx"], r["layer"])] = r
    return rows


def trace_rows(path: Path) -> pl.DataFrame:
    return open_trace(path).collect()


def test_clean_import_validates_and_matches_source(tmp_path, capsys):
    out = tmp_path / "t"
    rc, stdout, err = run_import(capsys, "--format", "jsonl", FIX / "clean.jsonl", "-o", out, *MAP,
                                 "--model-config", FIX / "tiny-moe.toml", "--prob-bits", 23)
    assert rc == 0, err
    assert "read      12 record(s) from 1 jsonl file(s): 2 sequence(s), 6 token(s)" in stdout
    assert "dropped   nothing" in stdout
    assert "2 sequence(s), 6 token(s) (prefill 3, decode 3)" in stdout
    trace = validate_trace(out)
    meta = trace.meta
    assert meta.ahead_distance == 0 and meta.model_id == "my-lab/tiny-moe"
    assert meta.expert_params == 3 * 64 * 128 and meta.bytes_per_expert["bfloat16"] == 2 * 3 * 64 * 128
    assert meta.dense_bytes_per_layer == 40000
    frame = trace_rows(out)
    # Key order although the source is shuffled.
    assert frame.select("seq", "step", "pos", "layer").rows() == sorted(frame.select("seq", "step", "pos", "layer").rows())
    source = source_rows(FIX / "clean.jsonl")
    assert frame.height == len(source)
    for row in frame.iter_rows(named=True):
        src = source[(row["seq"], row["pos"], row["layer"])]
        assert row["experts"] == src["experts"]
        assert row["probs"] == pytest.approx(src["gating_probs"], rel=1e-6)
        assert row["token"] == src["token_id"]
        assert row["phase"] == src["stage"]
        assert row["stack"] == "decoder" and row["ahead"] is None and row["dropped"] is False
    # Steps: prefill 0, decode 1.. in position order within the sequence.
    steps = frame.filter(pl.col("layer") == 0).select("seq", "pos", "step").rows()
    assert steps == [(10, 0, 0), (10, 1, 0), (10, 2, 1), (11, 0, 0), (11, 1, 1), (11, 2, 2)]


def test_inferred_shape_is_reported(tmp_path, capsys):
    rc, stdout, _ = run_import(capsys, "--format", "jsonl", FIX / "clean.jsonl", "-o", tmp_path / "t", *MAP)
    assert rc == 0
    assert "inferred  top-k 2" in stdout
    assert "inferred  4 experts per layer" in stdout
    assert "inferred  decoder: 2 MoE layers" in stdout
    assert "expert size unknown" in stdout
    meta = validate_trace(tmp_path / "t").meta
    assert meta.stacks["decoder"].experts == 4 and meta.bytes_per_expert == {}


def test_default_phase_and_no_token_no_pos(tmp_path, capsys):
    """Without phase, token or position fields: all decode, null tokens, record order."""
    rc, stdout, _ = run_import(capsys, "--format", "jsonl", FIX / "clean.jsonl", "-o", tmp_path / "t",
                               "--seq", "problem_id", "--probs", "gating_probs")
    assert rc == 0
    assert "no position field" in stdout and "token column is null" in stdout
    frame = trace_rows(tmp_path / "t")
    validate_trace(tmp_path / "t")
    assert set(frame["phase"]) == {"decode"} and frame["token"].is_null().all()
    # Positions follow record order within (seq, layer): compare with the file.
    records = [json.loads(line) for line in (FIX / "clean.jsonl").read_text().splitlines()]
    for seq in (10, 11):
        for layer in (0, 1):
            expected = [r["experts"] for r in records if r["problem_id"] == seq and r["layer"] == layer]
            got = frame.filter((pl.col("seq") == seq) & (pl.col("layer") == layer)).sort("pos")
            assert got["experts"].to_list() == expected
            assert got["step"].to_list() == [1, 2, 3]


def test_exact_duplicate_dropped_and_mismatch_fails_by_default(tmp_path, capsys):
    rc, _, err = run_import(capsys, "--format", "jsonl", FIX / "defects.jsonl", "-o", tmp_path / "t", *MAP)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert "1 sequence(s) have layers whose tokens disagree" in lines[0]
    assert "seq 11 (decoder): layer 1 has 2 tokens, other layers 3" in lines[0]
    assert "--on-mismatch" in lines[0]
    assert not (tmp_path / "t").exists() or not any((tmp_path / "t").iterdir())


def test_mismatch_drop(tmp_path, capsys):
    rc, stdout, _ = run_import(capsys, "--format", "jsonl", FIX / "defects.jsonl", "-o", tmp_path / "t", *MAP,
                               "--on-mismatch", "drop")
    assert rc == 0
    assert "1 exact duplicate record(s)" in stdout
    assert "5 record(s), 3 token(s) and 1 whole sequence(s) where layers disagree" in stdout
    assert "seq 11 (decoder): layer 1 has 2 tokens" in stdout
    frame = trace_rows(tmp_path / "t")
    validate_trace(tmp_path / "t")
    assert set(frame["seq"]) == {10} and frame.height == 6


def test_mismatch_keep_aligned(tmp_path, capsys):
    rc, stdout, _ = run_import(capsys, "--format", "jsonl", FIX / "defects.jsonl", "-o", tmp_path / "t", *MAP,
                               "--on-mismatch", "keep-aligned")
    assert rc == 0
    assert "1 record(s), 1 token(s) and 0 whole sequence(s)" in stdout
    frame = trace_rows(tmp_path / "t")
    validate_trace(tmp_path / "t")
    assert frame.height == 10
    seq11 = frame.filter(pl.col("seq") == 11)
    assert sorted(set(seq11["pos"])) == [0, 1]
    assert seq11.group_by("pos").len()["len"].to_list() == [2, 2]


def test_conflicting_key_fails_unless_told(tmp_path, capsys):
    rc, _, err = run_import(capsys, "--format", "jsonl", FIX / "conflict.jsonl", "-o", tmp_path / "t", *MAP)
    assert rc == 2
    assert "1 key(s) appear more than once with different content" in err
    assert "seq 10 pos 1 layer 0" in err and "line 13" in err and "--on-duplicate" in err
    records = [json.loads(line) for line in (FIX / "conflict.jsonl").read_text().splitlines()]
    first = next(r for r in records if (r["problem_id"], r["token_idx"], r["layer"]) == (10, 1, 0))
    for mode, expected in (("first", first["experts"]), ("last", records[-1]["experts"])):
        out = tmp_path / mode
        rc, stdout, _ = run_import(capsys, "--format", "jsonl", FIX / "conflict.jsonl", "-o", out, *MAP,
                                   "--on-duplicate", mode, "--prob-bits", 23)
        assert rc == 0 and "1 record(s) of 1 key(s) given twice" in stdout
        row = trace_rows(out).filter((pl.col("seq") == 10) & (pl.col("pos") == 1) & (pl.col("layer") == 0))
        assert row.height == 1 and row["experts"].to_list() == [expected]


def test_out_of_range_id_names_file_and_line(tmp_path, capsys):
    rc, _, err = run_import(capsys, "--format", "jsonl", FIX / "out_of_range.jsonl", "-o", tmp_path / "t", *MAP,
                            "--experts", "4")
    assert rc == 2
    assert err.count("\n") == 1
    assert "out_of_range.jsonl: line 5: expert id 4 out of range (the model has 4 experts: ids 0..3)" in err


def test_list_length_must_match_top_k(tmp_path, capsys):
    rc, _, err = run_import(capsys, "--format", "jsonl", FIX / "wrong_k.jsonl", "-o", tmp_path / "t", *MAP,
                            "--top-k", "2")
    assert rc == 2 and "wrong_k.jsonl: line 3: 3 experts [1, 2, 3], but the model's top-k is 2" in err
    rc, _, err = run_import(capsys, "--format", "jsonl", FIX / "wrong_k.jsonl", "-o", tmp_path / "t", *MAP)
    assert rc == 2 and "line 3: 3 experts [1, 2, 3] where earlier records have 2" in err


def test_layer_beyond_model_and_known_model(tmp_path, capsys):
    rc, _, err = run_import(capsys, "--format", "jsonl", FIX / "clean.jsonl", "-o", tmp_path / "t", *MAP,
                            "--moe-layers", "1", "--experts", "4")
    assert rc == 2 and "layer 1 out of range (decoder has 1 MoE layers: 0..0)" in err
    rc, stdout, _ = run_import(capsys, "--format", "jsonl", FIX / "clean.jsonl", "-o", tmp_path / "m", *MAP,
                               "--model", "Mixtral-8x7B")
    assert rc == 0 and "records for 2 of its 32 MoE layers" in stdout
    meta = validate_trace(tmp_path / "m").meta
    assert meta.family == "mixtral" and meta.stacks["decoder"].moe_layers == 32
    assert meta.bytes_per_expert["bfloat16"] == 3 * 4096 * 14336 * 2
    rc, _, err = run_import(capsys, "--format", "jsonl", FIX / "clean.jsonl", "-o", tmp_path / "x", "--model", "gpt-moe")
    assert rc == 2 and "unknown model 'gpt-moe'" in err


def test_existing_output_needs_overwrite(tmp_path, capsys):
    args = ["--format", "jsonl", FIX / "clean.jsonl", "-o", tmp_path / "t", *MAP]
    assert run_import(capsys, *args)[0] == 0
    rc, _, err = run_import(capsys, *args)
    assert rc == 2 and "already holds a trace; pass --overwrite" in err
    rc, _, _ = run_import(capsys, *args, "--overwrite", "--part-rows", "5")
    assert rc == 0
    trace = validate_trace(tmp_path / "t")
    assert len(trace.files) == 3 and trace.num_rows == 12


def test_messy_fields(tmp_path, capsys):
    """String sequence ids, bare top-1 ids, probabilities out of order, a missing field, bad JSON."""
    src = tmp_path / "top1.jsonl"
    lines = [{"req": f"r{s}", "layer": layer, "expert": (s + layer) % 3, "p": 0.5} for s in range(2) for layer in range(2)]
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    rc, stdout, err = run_import(capsys, "--format", "jsonl", src, "-o", tmp_path / "a", "--seq", "req",
                                 "--experts", "expert", "--probs", "p")
    assert rc == 0, err
    assert "numbered 0..1 in order of first appearance" in stdout
    frame = trace_rows(tmp_path / "a")
    assert frame["experts"].to_list() == [[0], [1], [1], [2]]

    src = tmp_path / "order.jsonl"
    src.write_text(json.dumps({"seq": 0, "layer": 0, "experts": [2, 1], "probs": [0.1, 0.7]}) + "\n")
    rc, stdout, _ = run_import(capsys, "--format", "jsonl", src, "-o", tmp_path / "b", "--prob-bits", 23)
    assert rc == 0 and "reordered 1 record(s)" in stdout
    row = trace_rows(tmp_path / "b").row(0, named=True)
    assert row["experts"] == [1, 2] and row["probs"] == pytest.approx([0.7, 0.1])

    rc, _, err = run_import(capsys, "--format", "jsonl", src, "-o", tmp_path / "c", "--probs", "gating_probs")
    assert rc == 2 and "no field 'gating_probs' for probs" in err
    src.write_text('{"seq": 0, "layer": 0, "experts": [1]}\n{"seq": 0, "layer": \n')
    rc, _, err = run_import(capsys, "--format", "jsonl", src, "-o", tmp_path / "d")
    assert rc == 2 and "not valid JSON Lines" in err and err.count("\n") == 1
    src.write_text(json.dumps({"seq": 0, "layer": 0, "experts": [1, 0], "probs": [2.5, -1.0]}) + "\n")
    rc, _, err = run_import(capsys, "--format", "jsonl", src, "-o", tmp_path / "e")
    assert rc == 2 and "line 1: probability outside [0, 1]" in err


def test_one_record_per_token_with_a_list_per_layer(tmp_path, capsys):
    src = tmp_path / "nested.jsonl"
    src.write_text(
        json.dumps({"seq": 0, "pos": 0, "experts": [[0, 1], [2, 3], [1, 3]], "probs": [[0.6, 0.4], [0.5, 0.5], [0.9, 0.1]]})
        + "\n"
        + json.dumps({"seq": 0, "pos": 1, "experts": [[3, 1], [0, 2], [2, 0]], "probs": [[0.6, 0.4], [0.5, 0.5], [0.9, 0.1]]})
        + "\n"
    )
    rc, stdout, err = run_import(capsys, "--format", "jsonl", src, "-o", tmp_path / "t")
    assert rc == 0, err
    frame = trace_rows(tmp_path / "t")
    validate_trace(tmp_path / "t")
    assert frame.height == 6 and frame["layer"].to_list() == [0, 1, 2, 0, 1, 2]
    assert frame["experts"].to_list()[3:] == [[3, 1], [0, 2], [2, 0]]


def test_layer_from_file_name_and_constant(tmp_path, capsys):
    for layer in (0, 1):
        rows = [{"seq": s, "pos": p, "experts": [(s + p + layer) % 4], "probs": [1.0]} for s in range(2) for p in range(2)]
        (tmp_path / f"moe_layer-{layer}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    rc, stdout, err = run_import(capsys, "--format", "jsonl", tmp_path / "moe_layer-0.jsonl",
                                 tmp_path / "moe_layer-1.jsonl", "-o", tmp_path / "t")
    assert rc == 0, err
    frame = trace_rows(tmp_path / "t")
    assert frame.height == 8 and sorted(set(frame["layer"])) == [0, 1]
    rc, _, err = run_import(capsys, "--format", "jsonl", tmp_path / "moe_layer-1.jsonl", "-o", tmp_path / "u",
                            "--layer", "3")
    assert rc == 0 and set(trace_rows(tmp_path / "u")["layer"]) == {3}
    plain = tmp_path / "routing.jsonl"
    shutil.copy(tmp_path / "moe_layer-0.jsonl", plain)
    rc, _, err = run_import(capsys, "--format", "jsonl", plain, "-o", tmp_path / "v")
    assert rc == 2 and "cannot tell the MoE layer" in err
