"""Checking a trace against the rules of the format.

Each rule is a polars filter that selects offending rows; the first one found
becomes a :class:`TraceValidationError` naming the file, the column and the
row (0-based, within that file). Rules run part by part so that a bad row is
reported where it lives, then the key uniqueness is checked over all parts.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pregate.traces.errors import TraceValidationError
from pregate.traces.reader import Trace, open_trace
from pregate.traces.schema import KEY_COLUMNS, PHASES, TraceMeta

ROW = "__row"


def _per_stack(meta: TraceMeta, attr: str) -> pl.Expr:
    mapping = {name: getattr(s, attr) for name, s in meta.stacks.items()}
    return pl.col("stack").replace_strict(mapping, default=None, return_dtype=pl.Int64)


def _list_checks(column: str, length: pl.Expr, low: float, high: pl.Expr | float, kind: str,
                 length_name: str = "top-k of the row's stack") -> list:
    """Rules for a flat list column: its length, null items, NaN and value range."""
    col = pl.col(column)
    rules = [
        (col.is_null(), f"is null; every row needs its {column}"),
        (col.list.len() != length, f"list length differs from {length_name}"),
        (col.list.eval(pl.element().is_null()).list.any(), "contains a null item"),
    ]
    if kind == "float":
        rules.append((col.list.eval(pl.element().is_nan()).list.any(), "contains NaN"))
    rules += [
        (col.list.min() < low, f"value below {low}"),
        (col.list.max() > high, f"value above the allowed maximum ({'experts - 1' if kind == 'int' else high})"),
    ]
    return rules


def _first_violation(frame: pl.DataFrame, rules: list, file: Path, column: str) -> None:
    for condition, problem in rules:
        hit = frame.filter(condition.fill_null(False)).select(ROW).head(1)
        if hit.height:
            raise TraceValidationError(str(file), column, int(hit.item()), problem)


def _check_part(file: Path, meta: TraceMeta) -> pl.DataFrame:
    frame = pl.read_parquet(file).with_row_index(ROW).with_columns(
        pl.col("stack").cast(pl.String), pl.col("phase").cast(pl.String)
    )
    n_layers, n_experts, top_k = (_per_stack(meta, a) for a in ("moe_layers", "experts", "top_k"))
    width = pl.col("stack").replace_strict(
        {name: meta.ahead_k(name) for name in meta.stacks}, default=None, return_dtype=pl.Int64
    )
    frame = frame.with_columns(
        n_layers.alias("__layers"), n_experts.alias("__experts"), top_k.alias("__k"), width.alias("__w")
    )
    stacks = sorted(meta.stacks)
    _first_violation(frame, [(~pl.col("stack").is_in(stacks), f"stack not in the trace's stacks ({', '.join(stacks)})")], file, "stack")
    _first_violation(frame, [(~pl.col("phase").is_in(list(PHASES)), "phase must be 'prefill' or 'decode'")], file, "phase")
    _first_violation(
        frame,
        [
            (pl.col("step") < 0, "negative step"),
            ((pl.col("phase") == "decode") & (pl.col("step") < 1), "decode rows need step >= 1"),
        ],
        file,
        "step",
    )
    _first_violation(frame, [(pl.col("pos") < 0, "negative position")], file, "pos")
    _first_violation(
        frame,
        [
            (pl.col("layer") < 0, "negative MoE layer"),
            (pl.col("layer") >= pl.col("__layers"), "MoE layer >= the number of MoE layers of its stack"),
        ],
        file,
        "layer",
    )
    _first_violation(frame, _list_checks("experts", pl.col("__k"), 0, pl.col("__experts") - 1, "int"), file, "experts")
    _first_violation(frame, _list_checks("probs", pl.col("__k"), 0.0, 1.0, "float"), file, "probs")
    _first_violation(frame, [(pl.col("dropped").is_null(), "is null")], file, "dropped")
    _check_ahead(frame, meta, file)
    return frame.select(*KEY_COLUMNS, ROW)


def _check_ahead(frame: pl.DataFrame, meta: TraceMeta, file: Path) -> None:
    if meta.ahead_distance == 0:
        for column in ("ahead", "ahead_probs"):
            _first_violation(frame, [(pl.col(column).is_not_null(), "set although the trace declares ahead_distance 0")], file, column)
        return
    expected_len = pl.min_horizontal(pl.lit(meta.ahead_distance), pl.col("__layers") - 1 - pl.col("layer")).clip(0)
    for column, kind, high in (("ahead", "int", pl.col("__experts") - 1), ("ahead_probs", "float", 1.0)):
        _first_violation(
            frame,
            [
                (pl.col(column).is_null(), "is null; the trace declares ahead predictions"),
                (pl.col(column).list.len() != expected_len, "outer length must be min(J, MoE layers - 1 - layer)"),
            ],
            file,
            column,
        )
        # Rows whose outer list is empty (last layer of a stack) would explode to a null item.
        inner = frame.filter(pl.col(column).list.len() > 0).select(ROW, "__w", "__experts", column).explode(column)
        _first_violation(inner, _list_checks(column, pl.col("__w"), 0, high, kind, "the trace's ahead width"), file, column)


def validate_trace(path: str | Path) -> Trace:
    """Check every rule on every part; return the opened trace or raise on the first violation."""
    trace = open_trace(path)
    keys = []
    for index, file in enumerate(trace.files):
        keys.append(_check_part(file, trace.meta).with_columns(pl.lit(index).alias("__file")))
    all_keys = pl.concat(keys)
    # Report the second occurrence of a key: the first is where it is legitimately defined.
    duplicated = all_keys.filter(~pl.struct(*KEY_COLUMNS).is_first_distinct())
    if duplicated.height:
        first = duplicated.row(0, named=True)
        key = ", ".join(f"{c}={first[c]}" for c in KEY_COLUMNS)
        raise TraceValidationError(
            str(trace.files[first["__file"]]), "seq/stack/step/pos/layer", first[ROW], f"duplicate key ({key})"
        )
    return trace
