"""pregate import --format parquet: list columns as published routing datasets store them."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq

from pregate.cli import main
from pregate.traces import open_trace, validate_trace

FIX = Path(__file__).parent / "fixtures" / "import"
MAP = ["--seq", "problem_id", "--pos", "token_idx", "--token", "token_id", "--probs", "gating_probs", "--phase", "stage"]


def run_import(capsys, *args):
    rc = main(["import", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def records(name: str = "clean.jsonl") -> list[dict]:
    return [json.loads(line) for line in (FIX / name).read_text().splitlines()]


def to_table(rows: list[dict]) -> pa.Table:
    return pa.table({
        "problem_id": pa.array([r["problem_id"] for r in rows], pa.int64()),
        "token_idx": pa.array([r["token_idx"] for r in rows], pa.int32()),
        "token_id": pa.array([r["token_id"] for r in rows], pa.int32()),
        "layer": pa.array([r["layer"] for r in rows], pa.int8()),
        "experts": pa.array([r["experts"] for r in rows], pa.list_(pa.int16())),
        "gating_probs": pa.array([r["gating_probs"] for r in rows], pa.list_(pa.float32())),
        "stage": pa.array([r["stage"] for r in rows], pa.string()),
    })


def test_parquet_matches_the_jsonl_import(tmp_path, capsys):
    pq.write_table(to_table(records()), tmp_path / "routing.parquet")
    rc, stdout, err = run_import(capsys, "--format", "parquet", tmp_path / "routing.parquet", "-o", tmp_path / "p",
                                 *MAP, "--model-config", FIX / "tiny-moe.toml")
    assert rc == 0, err
    rc, _, _ = run_import(capsys, "--format", "jsonl", FIX / "clean.jsonl", "-o", tmp_path / "j", *MAP,
                          "--model-config", FIX / "tiny-moe.toml")
    assert rc == 0
    a, b = validate_trace(tmp_path / "p"), validate_trace(tmp_path / "j")
    assert open_trace(tmp_path / "p").collect().equals(open_trace(tmp_path / "j").collect())
    assert a.meta.stacks == b.meta.stacks and a.meta.bytes_per_expert == b.meta.bytes_per_expert


def test_folder_of_parts_with_a_list_per_layer(tmp_path, capsys):
    """One row per token holding one expert list per layer (fixed-size lists), split over two files."""
    folder = tmp_path / "dataset"
    folder.mkdir()
    for part, seqs in enumerate(((0, 1), (2,))):
        rows = [(s, p) for s in seqs for p in range(3)]
        experts = [[[(s + p + layer) % 8, (s + p + layer + 1) % 8] for layer in range(4)] for s, p in rows]
        table = pa.table({
            "request_id": [f"req-{s}" for s, _ in rows],
            "position": [p for _, p in rows],
            "topk_ids": pa.array(experts, pa.list_(pa.list_(pa.int32(), 2))),
            "topk_weights": pa.array([[[0.7, 0.3]] * 4 for _ in rows], pa.list_(pa.list_(pa.float64()))),
        })
        pq.write_table(table, folder / f"part-{part}.parquet")
    rc, stdout, err = run_import(capsys, "--format", "parquet", folder, "-o", tmp_path / "t", "--seq", "request_id",
                                 "--pos", "position", "--experts", "topk_ids", "--probs", "topk_weights",
                                 "--model", "olmoe-1b-7b", "--top-k", "2")
    assert rc == 0, err
    assert "read      36 record(s) from 2 parquet file(s)" in stdout
    trace = validate_trace(tmp_path / "t")
    frame = open_trace(tmp_path / "t").collect()
    assert frame.height == 36 and trace.meta.stacks["decoder"].experts == 64
    row = frame.filter((pl.col("seq") == 2) & (pl.col("pos") == 1) & (pl.col("layer") == 3)).row(0, named=True)
    assert row["experts"] == [6, 7]


def test_parquet_defects(tmp_path, capsys):
    rows = records("defects.jsonl")
    feather.write_feather(to_table(rows), tmp_path / "defects.arrow")
    rc, _, err = run_import(capsys, "--format", "parquet", tmp_path / "defects.arrow", "-o", tmp_path / "a", *MAP)
    assert rc == 2 and "seq 11 (decoder): layer 1 has 2 tokens" in err
    rc, stdout, _ = run_import(capsys, "--format", "parquet", tmp_path / "defects.arrow", "-o", tmp_path / "b", *MAP,
                               "--on-mismatch", "drop")
    assert rc == 0 and "1 exact duplicate record(s)" in stdout
    assert set(open_trace(tmp_path / "b").collect()["seq"]) == {10}

    bad = records()
    bad[6] = dict(bad[6], experts=[9, 1])
    pq.write_table(to_table(bad), tmp_path / "range.parquet")
    rc, _, err = run_import(capsys, "--format", "parquet", tmp_path / "range.parquet", "-o", tmp_path / "c", *MAP,
                            "--experts", "8")
    assert rc == 2 and "range.parquet: row 6: expert id 9 out of range" in err

    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    rc, _, err = run_import(capsys, "--format", "parquet", tmp_path / "broken.parquet", "-o", tmp_path / "d")
    assert rc == 2 and "broken.parquet: not a readable Parquet/Arrow file" in err and err.count("\n") == 1
    rc, _, err = run_import(capsys, "--format", "parquet", tmp_path / "missing.parquet", "-o", tmp_path / "e")
    assert rc == 2 and "source not found" in err
