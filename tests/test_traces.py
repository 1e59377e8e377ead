"""The trace format: writing, reading, validating, and refusing bad input in one line."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pregate.cli import main
from pregate.traces import (
    StackMeta,
    TraceError,
    TraceValidationError,
    TraceWriter,
    open_trace,
    validate_trace,
)
from pregate.traces.schema import META_KEY, TraceMeta
from pregate.traces.writer import round_mantissa, write_part_atomic

from conftest import make_meta, make_table


def write(tmp_path, table, meta, name="t"):
    folder = tmp_path / name
    TraceWriter(folder, meta).write(0, table)
    return folder


def test_round_trip_keeps_every_value(tmp_path):
    meta = make_meta()
    table = make_table(meta)
    folder = write(tmp_path, table, meta)
    trace = open_trace(folder)
    assert trace.meta == meta
    back = trace.collect()
    original = pl.from_arrow(table).with_columns(pl.col("stack").cast(pl.String), pl.col("phase").cast(pl.String))
    assert back.equals(original.sort("seq", "stack", "step", "pos", "layer"))
    # last layer of the stack has nothing ahead; layer L-2 has one later layer
    by_layer = back.group_by("layer").agg(pl.col("ahead").list.len().max()).sort("layer")
    assert by_layer["ahead"].to_list() == [3, 2, 1, 0]


def test_probabilities_rounded_to_declared_precision():
    values = np.array([0.123456789, 0.5, 1.0, 0.999999, 1e-7], dtype=np.float32)
    rounded = round_mantissa(values, 10)
    assert np.all(np.abs(rounded - values) <= np.abs(values) * 2.0**-10)
    assert np.all(rounded <= 1.0)
    assert np.array_equal(round_mantissa(values, 23), values)


def test_parts_of_one_trace_scan_together(tmp_path):
    meta = make_meta()
    writer = TraceWriter(tmp_path / "t", meta)
    writer.write(0, make_table(meta, seqs=2))
    table = make_table(meta, seqs=2)
    shifted = table.set_column(0, "seq", pa.array(np.asarray(table["seq"]) + 10, pa.int32()))
    writer.write(1, shifted)
    trace = validate_trace(tmp_path / "t")
    assert trace.num_rows == 2 * table.num_rows
    assert sorted(trace.collect()["seq"].unique().to_list()) == [0, 1, 10, 11]


def test_writer_refuses_to_mix_traces(tmp_path):
    meta = make_meta()
    TraceWriter(tmp_path / "t", meta).write(0, make_table(meta))
    with pytest.raises(TraceError, match="--resume"):
        TraceWriter(tmp_path / "t", meta)
    other = make_meta(model_id="other")
    with pytest.raises(TraceError, match="other settings"):
        TraceWriter(tmp_path / "t", other, resume=True)
    assert TraceWriter(tmp_path / "t", meta, resume=True).has_part(0)


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    meta = make_meta()
    table = make_table(meta)

    def broken(table, where, **kw):
        with open(where, "wb") as fh:
            fh.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError):
        write_part_atomic(table, tmp_path / "part-00000.parquet")
    assert list(tmp_path.iterdir()) == []


# ---- rejection of damaged or wrong input: one line naming file, column, row ----------


def test_truncated_file_is_refused(tmp_path):
    meta = make_meta()
    folder = write(tmp_path, make_table(meta), meta)
    part = folder / "part-00000.parquet"
    part.write_bytes(part.read_bytes()[:-100])
    with pytest.raises(TraceError, match="not a readable Parquet file"):
        validate_trace(folder)


def test_wrong_column_type_is_refused(tmp_path):
    meta = make_meta()
    table = make_table(meta)
    bad = table.set_column(table.schema.get_field_index("layer"), "layer", table["layer"].cast(pa.float64()))
    folder = tmp_path / "bad"
    folder.mkdir()
    pq.write_table(bad.replace_schema_metadata({META_KEY: meta.to_json().encode()}), folder / "part-00000.parquet")
    with pytest.raises(TraceError, match="column 'layer' has type double, expected int16"):
        open_trace(folder)


def _mutate(table, column, row, value):
    data = table.to_pylist()
    data[row][column] = value
    return pa.Table.from_pylist(data, schema=table.schema)


@pytest.mark.parametrize(
    "column,value,message",
    [
        ("experts", [3, 8], "above the allowed maximum"),
        ("experts", [3], "list length"),
        ("probs", [0.5, 1.5], "above the allowed maximum"),
        ("probs", [0.5, float("nan")], "NaN"),
        ("layer", 4, "MoE layer >= the number of MoE layers"),
        ("ahead", [[1, 2]], "outer length"),
        ("ahead", [[1, 2], [1, 9], [0, 1]], "above the allowed maximum"),
        ("ahead_probs", [[0.1, 0.2], [0.1], [0.3, 0.3]], "list length"),
        ("phase", "decode", "decode rows need step >= 1"),
    ],
)
def test_validator_names_file_column_and_row(tmp_path, column, value, message):
    meta = make_meta()
    table = _mutate(make_table(meta), column, 4, value)  # row 4: pos 1, layer 0
    folder = write(tmp_path, table, meta)
    with pytest.raises(TraceValidationError, match=message) as info:
        validate_trace(folder)
    assert info.value.row == 4
    assert info.value.column == column or info.value.column in ("step",)
    assert "part-00000.parquet" in str(info.value)


def test_duplicate_key_is_refused_across_parts(tmp_path):
    meta = make_meta()
    writer = TraceWriter(tmp_path / "t", meta)
    writer.write(0, make_table(meta, seqs=2))
    writer.write(1, make_table(meta, seqs=1, seed=5))  # seq 0 again
    with pytest.raises(TraceValidationError, match="duplicate key \\(seq=0, stack=decoder, step=0, pos=0, layer=0\\)") as info:
        validate_trace(tmp_path / "t")
    assert "part-00001" in info.value.file and info.value.row == 0


def test_unsupported_version_and_missing_metadata(tmp_path):
    meta = make_meta()
    table = make_table(meta)
    folder = tmp_path / "v"
    folder.mkdir()
    data = json.loads(meta.to_json())
    data["format_version"] = 99
    pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(data).encode()}), folder / "part-00000.parquet")
    with pytest.raises(TraceError, match="version 99 is not supported"):
        open_trace(folder)
    pq.write_table(table.replace_schema_metadata({}), folder / "part-00000.parquet")
    with pytest.raises(TraceError, match="no pregate metadata"):
        open_trace(folder)


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(TraceError, match="trace not found"):
        open_trace(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TraceError, match="no .parquet parts"):
        open_trace(tmp_path / "empty")


def test_trace_without_ahead_must_have_null_ahead(tmp_path):
    meta = make_meta(ahead=0)
    folder = write(tmp_path, make_table(meta), meta)
    trace = validate_trace(folder)
    assert trace.collect()["ahead"].null_count() == trace.num_rows


def test_cli_validate_and_info(tmp_path, capsys):
    meta = make_meta()
    folder = write(tmp_path, make_table(meta), meta)
    assert main(["validate-trace", str(folder)]) == 0
    assert "ok:" in capsys.readouterr().out
    assert main(["trace-info", str(folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows"] == 3 * 5 * 4
    assert info["sequences"] == 3
    assert info["tokens"] == {"decoder/decode": 9, "decoder/prefill": 6}
    assert info["bytes_per_row"] > 0

    part = folder / "part-00000.parquet"
    bad = _mutate(pq.read_table(part), "experts", 3, [0, 99])
    pq.write_table(bad, part)
    assert main(["validate-trace", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "column 'experts', row 3" in err


def test_metadata_checks_shapes():
    with pytest.raises(TraceError, match="top_k 9 exceeds experts 8"):
        StackMeta(moe_layers=2, experts=8, top_k=9)
    with pytest.raises(TraceError, match="unknown stack 'middle'"):
        make_meta(stacks={"middle": StackMeta(2, 8, 1)})
    with pytest.raises(TraceError, match="unknown metadata key"):
        TraceMeta.from_json(json.dumps({**json.loads(make_meta().to_json()), "colour": 1}))


# ---- property-based: any valid table passes; any single out-of-range id is caught -------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    layers=st.integers(1, 5),
    experts=st.integers(2, 16),
    k=st.integers(1, 2),
    ahead=st.integers(0, 3),
    seqs=st.integers(1, 3),
    tokens=st.integers(2, 4),
    data=st.data(),
)
def test_validator_properties(tmp_path_factory, layers, experts, k, ahead, seqs, tokens, data):
    meta = make_meta(ahead=ahead, stacks={"decoder": StackMeta(layers, experts, k)})
    table = make_table(meta, seqs=seqs, tokens=tokens, seed=data.draw(st.integers(0, 1000)))
    folder = tmp_path_factory.mktemp("prop")
    writer = TraceWriter(folder, meta)
    writer.write(0, table)
    validate_trace(folder)

    row = data.draw(st.integers(0, table.num_rows - 1))
    bad_id = data.draw(st.integers(experts, experts + 100) | st.integers(-100, -1))
    experts_row = table["experts"][row].as_py()
    experts_row[data.draw(st.integers(0, k - 1))] = bad_id
    writer.write(0, _mutate(table, "experts", row, experts_row))
    with pytest.raises(TraceValidationError) as info:
        validate_trace(folder)
    assert (info.value.column, info.value.row) == ("experts", row)
