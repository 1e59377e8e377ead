"""What every importer shares: field mapping, cleaning, shape resolution, writing.

A format module reads its files into one *canonical* polars frame, one row per
source record, with these columns (``__file``/``__rec`` locate the record for
error messages):

``__file`` (u32: index into the source list), ``__rec`` (i64: record within the file),
``seq`` (i64 or str), ``stack`` (str or null), ``phase`` (str or null), ``layer`` (i64),
``pos`` (i64 or null), ``token`` (i64 or null), ``experts`` (list<i64>),
``probs`` (list<f64> or null), ``dropped`` (bool or null).

:func:`import_frames` then checks the records, resolves the model shape,
removes duplicates, handles layers that disagree, numbers the steps and
writes the trace (see the package docstring for the rules).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from pregate.traces.errors import TraceError
from pregate.traces.importers.model_shapes import (
    ModelShape,
    bytes_per_dtype,
    check_dtype,
    dense_bytes,
    expert_params,
)
from pregate.traces.schema import PHASES, STACKS, StackMeta, TraceMeta

ON_DUPLICATE = ("error", "first", "last")
ON_MISMATCH = ("fail", "drop", "keep-aligned")
DEFAULT_LAYER_PATTERN = r"layer[_-]?(\d+)"
DEFAULT_PART_ROWS = 1_000_000
ROLES = ("seq", "layer", "experts", "probs", "token", "pos", "phase", "stack", "dropped")
_INT32_MAX = 2**31 - 1
# How many affected sequences a message lists before saying "and N more".
_LIST_AT_MOST = 3


@dataclass
class ColumnMap:
    """Source field for each trace column; ``None`` means the field of the same name, if present."""

    seq: str | None = None
    layer: str | None = None
    experts: str | None = None
    probs: str | None = None
    token: str | None = None
    pos: str | None = None
    phase: str | None = None
    stack: str | None = None
    dropped: str | None = None

    def pick(self, role: str, available: list[str], file: Path) -> str | None:
        """The field that holds ``role`` in a file with ``available`` fields, or None."""
        explicit = getattr(self, role)
        if explicit is not None:
            if explicit not in available:
                raise TraceError(
                    f"{file}: no field '{explicit}' for {role} (fields: {', '.join(available) or 'none'})"
                )
            return explicit
        return role if role in available else None


@dataclass
class ImportOptions:
    """Everything that decides how sources become a trace (recorded in the metadata)."""

    format: str
    columns: ColumnMap = field(default_factory=ColumnMap)
    layer_value: int | None = None  # one MoE layer for every record
    layer_pattern: str = DEFAULT_LAYER_PATTERN  # else the layer from the file name
    default_stack: str = "decoder"
    on_duplicate: str = "error"
    on_mismatch: str = "fail"
    scores_are_probs: bool = False  # csv-dense
    expert_columns: str | None = None  # csv-dense: regex whose group 1 is the expert id
    prob_bits: int = 10
    part_rows: int = DEFAULT_PART_ROWS
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.on_duplicate not in ON_DUPLICATE:
            raise TraceError(f"--on-duplicate must be one of {', '.join(ON_DUPLICATE)}")
        if self.on_mismatch not in ON_MISMATCH:
            raise TraceError(f"--on-mismatch must be one of {', '.join(ON_MISMATCH)}")
        if self.default_stack not in STACKS:
            raise TraceError(f"--default-stack must be one of {', '.join(STACKS)}")
        if self.part_rows < 1:
            raise TraceError("--part-rows must be at least 1")
        if not 1 <= self.prob_bits <= 23:
            raise TraceError("--prob-bits must be 1..23")
        for flag, pattern in (("--layer-pattern", self.layer_pattern), ("--expert-columns", self.expert_columns)):
            if pattern is None:
                continue
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise TraceError(f"{flag}: not a valid regular expression ({exc})") from None
            if compiled.groups < 1:
                raise TraceError(f"{flag}: the pattern needs a group that captures the number, e.g. 'layer(\\d+)'")
        if self.layer_value is not None and self.layer_value < 0:
            raise TraceError(f"--layer must not be negative, got {self.layer_value}")


Locator = Callable[[int, int], str]


@dataclass
class Source:
    """What a format module read: the canonical frame and how to name a record."""

    files: list[Path]
    frame: pl.DataFrame
    locate: Locator  # (file index, record index) -> "FILE line N"
    has_pos: bool
    has_probs: bool
    notes: list[str] = field(default_factory=list)
    experts: int | None = None  # experts per layer when the format shows it (csv-dense: score columns)


@dataclass
class ImportReport:
    """Counts for the summary ``pregate import`` prints."""

    format: str
    files: int = 0
    records: int = 0
    read_sequences: int = 0
    read_tokens: int = 0
    exact_duplicates: int = 0
    conflicting_keys: int = 0
    conflict_records_dropped: int = 0
    mismatched: list[str] = field(default_factory=list)  # one description per affected sequence
    mismatch_sequences: int = 0
    mismatch_records_dropped: int = 0
    mismatch_tokens_dropped: int = 0
    mismatch_sequences_dropped: int = 0
    reordered: int = 0
    kept_records: int = 0
    sequences: int = 0
    tokens: dict[str, int] = field(default_factory=dict)
    layers: dict[str, int] = field(default_factory=dict)
    inferred: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    parts: int = 0
    out: str = ""
    meta: TraceMeta | None = None

    def lines(self) -> list[str]:
        out = [
            f"read      {self.records} record(s) from {self.files} {self.format} file(s): "
            f"{self.read_sequences} sequence(s), {self.read_tokens} token(s)"
        ]
        dropped = []
        if self.exact_duplicates:
            dropped.append(f"{self.exact_duplicates} exact duplicate record(s)")
        if self.conflict_records_dropped:
            dropped.append(
                f"{self.conflict_records_dropped} record(s) of {self.conflicting_keys} key(s) given twice (--on-duplicate)"
            )
        if self.mismatch_records_dropped:
            dropped.append(
                f"{self.mismatch_records_dropped} record(s), {self.mismatch_tokens_dropped} token(s) and "
                f"{self.mismatch_sequences_dropped} whole sequence(s) where layers disagree (--on-mismatch)"
            )
        out.append("dropped   " + ("; ".join(dropped) if dropped else "nothing"))
        if self.mismatch_sequences:
            out.append(
                f"mismatch  {self.mismatch_sequences} sequence(s) whose layers disagree: " + "; ".join(self.mismatched)
            )
        tokens = ", ".join(f"{k} {v}" for k, v in self.tokens.items())
        layers = ", ".join(f"{k} {v}" for k, v in self.layers.items())
        out.append(
            f"kept      {self.kept_records} record(s): {self.sequences} sequence(s), "
            f"{sum(self.tokens.values())} token(s) ({tokens}), MoE layers with records: {layers}"
        )
        if self.reordered:
            out.append(f"reordered {self.reordered} record(s) whose experts were not best first (by probability)")
        if self.meta is not None:
            m = self.meta
            stacks = ", ".join(f"{n} {s.moe_layers} MoE layers" for n, s in m.stacks.items())
            any_stack = next(iter(m.stacks.values()))
            size = (
                f"{m.bytes_per_expert[m.dtype] / 1e6:.2f} MB per expert in {m.dtype}"
                if m.bytes_per_expert
                else "expert size unknown"
            )
            out.append(
                f"model     {m.model_id} ({m.family}): {stacks}, {any_stack.experts} experts, "
                f"top-{any_stack.top_k}, {size}"
            )
        for item in self.inferred:
            out.append(f"inferred  {item}")
        for note in self.notes:
            out.append(f"note      {note}")
        if self.out:
            out.append(f"wrote     {self.out} ({self.kept_records} rows in {self.parts} part(s))")
        return out


# ---- reading helpers used by the format modules ------------------------------------


def layer_from_name(path: Path, pattern: str) -> int | None:
    match = re.search(pattern, path.name, flags=re.IGNORECASE)
    return int(match.group(1)) if match else None


def _first_bad(mask: pl.Series) -> int | None:
    hits = mask.fill_null(False).arg_true()
    return int(hits[0]) if len(hits) else None


def _to_int(series: pl.Series, what: str, where: Callable[[int], str]) -> pl.Series:
    """Cast to Int64; a value that is not a whole number is an error naming its record."""
    if series.dtype.is_integer():
        return series.cast(pl.Int64)
    if series.dtype == pl.Null:
        return series.cast(pl.Int64)
    casted = series.cast(pl.Int64, strict=False)
    bad = casted.is_null() & series.is_not_null()
    if series.dtype.is_float():
        bad = bad | (series.is_not_null() & (series != series.floor()))
    row = _first_bad(bad)
    if row is not None:
        raise TraceError(f"{where(row)}: {what} {series[row]!r} is not a whole number")
    return casted


def _to_list(series: pl.Series, kind: str, what: str, where: Callable[[int], str]) -> pl.Series:
    """A list column of int64 (``kind='int'``) or float64 items; a bare number becomes a one-item list."""
    dtype = series.dtype
    if isinstance(dtype, pl.Array):
        series, dtype = series.cast(pl.List(dtype.inner)), pl.List(dtype.inner)
    if not isinstance(dtype, pl.List):
        if dtype.is_numeric() or dtype == pl.Null:
            # A bare number (top-1 logs) is a one-item list; a missing one stays missing.
            x = pl.col(series.name)
            series = series.to_frame().select(pl.when(x.is_null()).then(None).otherwise(pl.concat_list(x)).alias(series.name)).to_series()
            dtype = series.dtype
        else:
            row = _first_bad(series.is_not_null())
            raise TraceError(f"{where(row or 0)}: {what} must be a list of numbers, got {series[row or 0]!r}")
    inner = dtype.inner
    if isinstance(inner, (pl.List, pl.Array)):
        raise TraceError(f"{where(0)}: {what} holds lists of lists; records need one list per layer")
    if not (inner.is_numeric() or inner == pl.Null):
        row = _first_bad(series.is_not_null() & (series.list.len() > 0))
        raise TraceError(f"{where(row or 0)}: {what} must hold numbers, got {series[row or 0].to_list()!r}")
    target = pl.Int64 if kind == "int" else pl.Float64
    if kind == "int" and inner.is_float():
        flat = series.explode()
        bad_flat = flat.is_not_null() & ~flat.is_nan() & (flat != flat.floor())
        if bad_flat.any():
            # Map the flat position back to its record.
            lengths = series.list.len().fill_null(0).clip(lower_bound=1).to_numpy()
            row = int(np.searchsorted(np.cumsum(lengths), _first_bad(bad_flat), side="right"))
            raise TraceError(f"{where(row)}: {what} {series[row].to_list()!r} are not whole numbers")
    return series.cast(pl.List(target))


def _nested(series: pl.Series) -> bool:
    dtype = series.dtype
    return isinstance(dtype, (pl.List, pl.Array)) and isinstance(dtype.inner, (pl.List, pl.Array))


def canonical(
    frame: pl.DataFrame,
    file_index: int,
    path: Path,
    opts: ImportOptions,
    locate: Locator,
    *,
    experts: pl.Series | None = None,
    probs: pl.Series | None = None,
) -> tuple[pl.DataFrame, dict[str, bool]]:
    """One file's records as the canonical frame; also which optional fields it had.

    ``experts``/``probs`` replace the mapped fields (csv-dense computes them).
    A record whose experts field holds one list per layer (and that has no
    layer field) becomes one record per layer.
    """
    cols = opts.columns
    available = list(frame.columns)
    picked = {role: cols.pick(role, available, path) for role in ROLES}

    def where(row: int) -> str:
        return locate(file_index, row)

    n = frame.height
    frame = frame.with_row_index("__rec")
    layer_field = None if opts.layer_value is not None else picked["layer"]
    layer_const = opts.layer_value
    if experts is None:
        if picked["experts"] is None:
            raise TraceError(
                f"{path}: no field 'experts' (fields: {', '.join(available) or 'none'}); "
                "name the field of expert ids with --experts FIELD"
            )
        experts = frame[picked["experts"]]
    if probs is None and picked["probs"] is not None:
        probs = frame[picked["probs"]]
    if layer_field is None and layer_const is None and _nested(experts):
        # One record per token with a list of experts per layer: one record per (token, layer).
        layer_idx = pl.int_ranges(0, pl.col("__e").list.len()).alias("__layer")
        work = frame.with_columns(experts.alias("__e"))
        if probs is not None:
            if not _nested(probs):
                raise TraceError(f"{path}: experts hold one list per layer but probs do not")
            work = work.with_columns(probs.alias("__p"))
            bad = _first_bad(work["__e"].list.len() != work["__p"].list.len())
            if bad is not None:
                raise TraceError(f"{where(bad)}: experts and probs cover different numbers of layers")
        work = work.with_columns(layer_idx)
        explode = ["__e", "__layer"] + (["__p"] if probs is not None else [])
        work = work.explode(explode)
        frame = work.drop(explode)
        experts, layer_series = work["__e"], work["__layer"].cast(pl.Int64)
        probs = work["__p"] if probs is not None else None
        n = frame.height
    else:
        layer_series = None
    rec = frame["__rec"].cast(pl.Int64)

    def where_rec(row: int) -> str:
        return locate(file_index, int(rec[row]))

    if layer_series is None:
        if layer_field is not None:
            layer_series = _to_int(frame[layer_field], "layer", where_rec)
        else:
            if layer_const is None:
                layer_const = layer_from_name(path, opts.layer_pattern)
            if layer_const is None:
                raise TraceError(
                    f"{path}: cannot tell the MoE layer of its records (no field 'layer' and no layer "
                    f"number in the file name); pass --layer FIELD or --layer N"
                )
            layer_series = pl.Series("layer", np.full(n, layer_const, np.int64))
    out: dict[str, pl.Series] = {
        "__file": pl.Series("__file", np.full(n, file_index, np.uint32)),
        "__rec": rec,
    }
    if picked["seq"] is not None:
        seq = frame[picked["seq"]]
        out["seq"] = seq.cast(pl.Int64) if seq.dtype.is_integer() else seq.cast(pl.String)
    else:
        out["seq"] = pl.Series("seq", np.zeros(n, np.int64))
    out["stack"] = (
        frame[picked["stack"]].cast(pl.String).str.strip_chars().str.to_lowercase()
        if picked["stack"]
        else pl.Series("stack", [None] * n, pl.String)
    )
    out["phase"] = (
        frame[picked["phase"]].cast(pl.String).str.strip_chars().str.to_lowercase()
        if picked["phase"]
        else pl.Series("phase", [None] * n, pl.String)
    )
    out["layer"] = layer_series
    for role in ("pos", "token"):
        out[role] = (
            _to_int(frame[picked[role]], role, where_rec) if picked[role] else pl.Series(role, [None] * n, pl.Int64)
        )
    out["experts"] = _to_list(experts, "int", "experts", where_rec)
    out["probs"] = (
        _to_list(probs, "float", "probs", where_rec) if probs is not None else pl.Series("probs", [None] * n, pl.List(pl.Float64))
    )
    if picked["dropped"]:
        dropped = frame[picked["dropped"]]
        if dropped.dtype != pl.Boolean:
            casted = dropped.cast(pl.Boolean, strict=False)
            bad = _first_bad(casted.is_null() & dropped.is_not_null())
            if bad is not None:
                raise TraceError(f"{where_rec(bad)}: dropped {dropped[bad]!r} is not true/false")
            dropped = casted
        out["dropped"] = dropped
    else:
        out["dropped"] = pl.Series("dropped", [None] * n, pl.Boolean)
    canon = pl.DataFrame({k: v.rename(k) for k, v in out.items()})
    found = {role: picked[role] is not None for role in ("seq", "pos", "probs", "token", "phase")}
    found["probs"] = probs is not None
    return canon, found


def concat_sources(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Stack the files' canonical frames; seq ids become strings if any file has string ids."""
    if any(f.schema["seq"] == pl.String for f in frames):
        frames = [f.with_columns(pl.col("seq").cast(pl.String)) for f in frames]
    return pl.concat(frames, how="vertical_relaxed")


# ---- from canonical records to a trace ------------------------------------------------


class _Checker:
    def __init__(self, source: Source):
        self.source = source

    def fail_on(self, frame: pl.DataFrame, condition: pl.Expr, message: Callable[[dict], str]) -> None:
        hit = frame.with_row_index("__i").filter(condition.fill_null(False)).head(1)
        if hit.height:
            row = hit.row(0, named=True)
            raise TraceError(f"{self.source.locate(int(row['__file']), int(row['__rec']))}: {message(row)}")


def _normalise_seq(frame: pl.DataFrame, notes: list[str]) -> pl.DataFrame:
    seq = frame["seq"]
    if seq.dtype == pl.String:
        as_int = seq.cast(pl.Int64, strict=False)
        if as_int.null_count() == seq.null_count():
            frame = frame.with_columns(seq=as_int)
        else:
            order = seq.drop_nulls().unique(maintain_order=True)
            mapping = dict(zip(order.to_list(), range(len(order))))
            notes.append(f"sequence ids are not numbers: numbered 0..{len(order) - 1} in order of first appearance")
            return frame.with_columns(pl.col("seq").replace_strict(mapping, default=None, return_dtype=pl.Int64))
    seq = frame["seq"]
    if len(seq) and seq.drop_nulls().len() and (seq.max() > _INT32_MAX or seq.min() < -_INT32_MAX):
        notes.append("sequence ids exceed 32 bits: renumbered 0.. in the order of the ids")
        frame = frame.with_columns((pl.col("seq").rank("dense") - 1).cast(pl.Int64))
    return frame


def _check_records(frame: pl.DataFrame, check: _Checker, source: Source, shape: ModelShape) -> None:
    check.fail_on(frame, pl.col("seq").is_null(), lambda r: "record has no sequence id")
    check.fail_on(frame, pl.col("layer").is_null(), lambda r: "record has no layer")
    check.fail_on(frame, pl.col("layer") < 0, lambda r: f"negative layer {r['layer']}")
    check.fail_on(frame, pl.col("experts").is_null(), lambda r: "record has no experts")
    check.fail_on(frame, pl.col("experts").list.len() == 0, lambda r: "empty list of experts")
    check.fail_on(
        frame, pl.col("experts").list.eval(pl.element().is_null()).list.any(), lambda r: f"null expert id in {r['experts']}"
    )
    check.fail_on(frame, pl.col("experts").list.min() < 0, lambda r: f"negative expert id in {r['experts']}")
    check.fail_on(
        frame,
        pl.col("experts").list.n_unique() != pl.col("experts").list.len(),
        lambda r: f"expert id repeated in {r['experts']}",
    )
    if source.has_probs:
        check.fail_on(frame, pl.col("probs").is_null(), lambda r: "record has no probabilities")
        check.fail_on(
            frame,
            pl.col("probs").list.len() != pl.col("experts").list.len(),
            lambda r: f"{len(r['probs'])} probabilities for {len(r['experts'])} experts",
        )
        check.fail_on(
            frame,
            pl.col("probs").list.eval(pl.element().is_null() | pl.element().is_nan()).list.any(),
            lambda r: f"null or NaN probability in {r['probs']}",
        )
        check.fail_on(
            frame,
            (pl.col("probs").list.min() < 0) | (pl.col("probs").list.max() > 1),
            lambda r: f"probability outside [0, 1] in {r['probs']} (router logits are not probabilities)",
        )
    check.fail_on(
        frame,
        pl.col("phase").is_not_null() & ~pl.col("phase").is_in(list(PHASES)),
        lambda r: f"phase {r['phase']!r} is not 'prefill' or 'decode'",
    )
    check.fail_on(
        frame,
        ~pl.col("stack").is_in(list(STACKS)),
        lambda r: f"stack {r['stack']!r} is not 'encoder' or 'decoder'",
    )
    if source.has_pos:
        check.fail_on(frame, pl.col("pos").is_null(), lambda r: "record has no position")
        check.fail_on(frame, pl.col("pos") < 0, lambda r: f"negative position {r['pos']}")
        check.fail_on(frame, pl.col("pos") > _INT32_MAX, lambda r: f"position {r['pos']} exceeds 32 bits")
    check.fail_on(frame, pl.col("token") < 0, lambda r: f"negative token id {r['token']}")
    check.fail_on(frame, pl.col("token") > _INT32_MAX, lambda r: f"token id {r['token']} exceeds 32 bits")
    check.fail_on(frame, pl.col("layer") > 32767, lambda r: f"layer {r['layer']} exceeds 16 bits")


@dataclass
class Resolved:
    stacks: dict[str, int]
    experts: int
    top_k: int


def _resolve(frame: pl.DataFrame, check: _Checker, shape: ModelShape, report: ImportReport) -> Resolved:
    lengths = frame["experts"].list.len()
    if shape.top_k is not None:
        k = shape.top_k
        check.fail_on(
            frame,
            pl.col("experts").list.len() != k,
            lambda r: f"{len(r['experts'])} experts {r['experts']}, but the model's top-k is {k}",
        )
    else:
        k = int(lengths[0])
        check.fail_on(
            frame,
            pl.col("experts").list.len() != k,
            lambda r: f"{len(r['experts'])} experts {r['experts']} where earlier records have {k}; "
            "every record needs top-k experts",
        )
        report.inferred.append(f"top-k {k} (length of every expert list)")
    max_id = int(frame["experts"].list.max().max())
    if shape.experts is not None:
        n_experts = shape.experts
        check.fail_on(
            frame,
            pl.col("experts").list.max() >= n_experts,
            lambda r: f"expert id {max(r['experts'])} out of range (the model has {n_experts} experts: ids 0..{n_experts - 1})",
        )
    elif check.source.experts is not None:
        n_experts = check.source.experts
    else:
        n_experts = max_id + 1
        report.inferred.append(f"{n_experts} experts per layer (largest expert id + 1; the model may have more)")
    if k > n_experts:
        raise TraceError(f"top-k {k} exceeds the {n_experts} experts per layer")
    data_stacks = sorted(frame["stack"].unique().to_list(), key=STACKS.index)
    declared = dict(shape.stacks) if shape.stacks else None
    if declared is not None:
        extra = [s for s in data_stacks if s not in declared]
        if extra:
            first = frame.with_row_index("__i").filter(pl.col("stack") == extra[0]).row(0, named=True)
            raise TraceError(
                f"{check.source.locate(int(first['__file']), int(first['__rec']))}: record of stack '{extra[0]}', "
                f"but the model has only {', '.join(declared)}"
            )
    else:
        declared = {s: None for s in data_stacks}
    stacks: dict[str, int] = {}
    for name in sorted(declared, key=STACKS.index):
        layers = declared[name] if declared[name] is not None else shape.moe_layers
        in_stack = frame.filter(pl.col("stack") == name)
        if layers is None:
            layers = int(in_stack["layer"].max()) + 1
            report.inferred.append(f"{name}: {layers} MoE layers (largest layer + 1)")
        else:
            limit = layers
            check.fail_on(
                in_stack,
                pl.col("layer") >= limit,
                lambda r: f"layer {r['layer']} out of range ({r['stack']} has {limit} MoE layers: 0..{limit - 1})",
            )
        stacks[name] = layers
    return Resolved(stacks=stacks, experts=n_experts, top_k=k)


KEY = ("seq", "stack", "pos", "layer")


def _dedupe(frame: pl.DataFrame, check: _Checker, opts: ImportOptions, report: ImportReport) -> pl.DataFrame:
    content = ["seq", "stack", "phase", "pos", "layer", "token", "experts", "probs", "dropped"]
    before = frame.height
    frame = frame.filter(pl.struct(content).is_first_distinct())
    report.exact_duplicates = before - frame.height
    repeated = frame.filter(pl.struct(list(KEY)).is_duplicated())
    if not repeated.height:
        return frame
    keys = repeated.select(KEY).unique().height
    report.conflicting_keys = keys
    if opts.on_duplicate == "error":
        first = repeated.row(0, named=True)
        twin = repeated.filter(
            (pl.col("seq") == first["seq"]) & (pl.col("stack") == first["stack"])
            & (pl.col("pos") == first["pos"]) & (pl.col("layer") == first["layer"])
        ).row(1, named=True)
        loc = check.source.locate
        raise TraceError(
            f"{keys} key(s) appear more than once with different content, first seq {first['seq']} "
            f"pos {first['pos']} layer {first['layer']} at {loc(first['__file'], first['__rec'])} and "
            f"{loc(twin['__file'], twin['__rec'])}; pass --on-duplicate first or last to keep one"
        )
    kept = frame.unique(subset=list(KEY), keep=opts.on_duplicate, maintain_order=True)
    report.conflict_records_dropped = frame.height - kept.height
    return kept


def _describe_mismatch(counts: pl.DataFrame, layers: list[int]) -> str:
    """'seq 3 (decoder): layer 5 has 11 tokens, layer 7 none, other layers 12'."""
    first = counts.row(0, named=True)
    per_layer = dict(zip(counts["layer"].to_list(), counts["n"].to_list()))
    values = [per_layer.get(layer, 0) for layer in layers]
    common = max(set(values), key=lambda v: (values.count(v), v))  # ties: the fuller layers
    odd = [f"layer {layer} {'has ' + str(per_layer[layer]) + ' tokens' if per_layer.get(layer) else 'has none'}"
           for layer in layers if per_layer.get(layer, 0) != common]
    if not odd:
        return f"seq {first['seq']} ({first['stack']}): same counts, different token positions across layers"
    return f"seq {first['seq']} ({first['stack']}): {', '.join(odd)}, other layers {common}"


def _mismatch(frame: pl.DataFrame, opts: ImportOptions, report: ImportReport, has_pos: bool) -> pl.DataFrame:
    layer_sets = {
        s: sorted(frame.filter(pl.col("stack") == s)["layer"].unique().to_list()) for s in frame["stack"].unique()
    }
    n_layers = pl.col("stack").replace_strict({s: len(v) for s, v in layer_sets.items()}, return_dtype=pl.Int64)
    tokens = frame.group_by("seq", "stack", "pos").agg(pl.len().alias("n")).with_columns(full=pl.col("n") == n_layers)
    bad = tokens.filter(~pl.col("full")).select("seq", "stack").unique().sort("seq", "stack")
    if not bad.height:
        return frame
    report.mismatch_sequences = bad.select("seq").n_unique()
    per_layer = frame.join(bad, on=["seq", "stack"]).group_by("seq", "stack", "layer").agg(pl.len().alias("n"))
    shown = []
    for seq, stack in bad.head(_LIST_AT_MOST).iter_rows():
        counts = per_layer.filter((pl.col("seq") == seq) & (pl.col("stack") == stack)).sort("layer")
        shown.append(_describe_mismatch(counts, layer_sets[stack]))
    if bad.height > _LIST_AT_MOST:
        shown.append(f"and {bad.height - _LIST_AT_MOST} more")
    report.mismatched = shown
    if opts.on_mismatch == "fail":
        how = "" if has_pos else " (tokens are counted in record order: no position field)"
        raise TraceError(
            f"{report.mismatch_sequences} sequence(s) have layers whose tokens disagree{how}: {'; '.join(shown)}; "
            "pass --on-mismatch drop (drop those sequences) or keep-aligned (keep tokens present in every layer)"
        )
    before_tokens = frame.select("seq", "stack", "pos").unique().height
    before_seqs = frame["seq"].n_unique()
    if opts.on_mismatch == "drop":
        kept = frame.join(bad.select("seq").unique(), on="seq", how="anti")
    else:
        kept = frame.join(tokens.filter("full").select("seq", "stack", "pos"), on=["seq", "stack", "pos"], how="semi")
        if not has_pos:
            report.notes.append(
                "keep-aligned without a position field matched tokens across layers by record order"
            )
    report.mismatch_records_dropped = frame.height - kept.height
    report.mismatch_tokens_dropped = before_tokens - kept.select("seq", "stack", "pos").unique().height
    report.mismatch_sequences_dropped = before_seqs - kept["seq"].n_unique()
    return kept


def import_frames(source: Source, shape: ModelShape, opts: ImportOptions, report: ImportReport) -> tuple[TraceMeta, dict]:
    """Clean the canonical records and return the trace metadata and its sorted column arrays."""
    frame = source.frame
    report.files = len(source.files)
    report.records = frame.height
    report.notes.extend(source.notes)
    if not frame.height:
        raise TraceError(f"no records in {', '.join(str(f) for f in source.files)}")
    check = _Checker(source)
    frame = _normalise_seq(frame, report.notes)
    frame = frame.with_columns(pl.col("stack").fill_null(opts.default_stack))
    _check_records(frame, check, source, shape)
    resolved = _resolve(frame, check, shape, report)
    if source.has_pos:
        frame = _dedupe(frame, check, opts, report)
    else:
        # Tokens are numbered in record order within each (sequence, stack, layer).
        frame = frame.with_columns(pos=pl.int_range(pl.len()).over("seq", "stack", "layer").cast(pl.Int64))
    report.read_sequences = frame["seq"].n_unique()
    report.read_tokens = frame.select("seq", "stack", "pos").unique().height
    frame = _mismatch(frame, opts, report, source.has_pos)
    if not frame.height:
        raise TraceError("no records left after dropping the sequences whose layers disagree")
    # Phase: from the source, else prompt (encoder) tokens are prefill and decoder tokens decode.
    default_phase = pl.when(pl.col("stack") == "encoder").then(pl.lit("prefill")).otherwise(pl.lit("decode"))
    frame = frame.with_columns(phase=pl.col("phase").fill_null(default_phase))
    per_token = frame.group_by("seq", "stack", "pos").agg(
        pl.col("phase").n_unique().alias("phases"),
        pl.col("token").n_unique().alias("tokens"),
        pl.col("__file").first(),
        pl.col("__rec").first(),
    )
    for column, what in (("phases", "phase"), ("tokens", "token id")):
        check.fail_on(
            per_token,
            pl.col(column) > 1,
            lambda r, what=what: f"the layers of seq {r['seq']} position {r['pos']} disagree about its {what}",
        )
    stack_code = pl.col("stack").replace_strict({s: i for i, s in enumerate(STACKS)}, return_dtype=pl.Int8)
    steps = (
        frame.select("seq", "stack", "pos", "phase").unique(subset=["seq", "stack", "pos"])
        .sort("seq", "stack", "pos")
        .with_columns(
            step=pl.when(pl.col("phase") == "decode")
            .then((pl.col("phase") == "decode").cum_sum().over("seq", "stack"))
            .otherwise(0)
            .cast(pl.Int64)
        )
        .drop("phase")
    )
    frame = (
        frame.join(steps, on=["seq", "stack", "pos"], how="left")
        .with_columns(stack_code.alias("__stack"))
        .sort("seq", "__stack", "step", "pos", "layer")
    )
    report.kept_records = frame.height
    report.sequences = frame["seq"].n_unique()
    tok = frame.select("seq", "stack", "pos", "phase").unique(subset=["seq", "stack", "pos"])
    report.tokens = {p: int((tok["phase"] == p).sum()) for p in PHASES if (tok["phase"] == p).any()}
    report.layers = {s: frame.filter(pl.col("stack") == s)["layer"].n_unique() for s in resolved.stacks
                     if (frame["stack"] == s).any()}
    for name, count in report.layers.items():
        if count < resolved.stacks[name]:
            report.notes.append(f"{name}: records for {count} of its {resolved.stacks[name]} MoE layers")

    k = resolved.top_k
    experts = frame["experts"].explode().to_numpy().astype(np.int64).reshape(-1, k)
    if source.has_probs:
        probs = frame["probs"].explode().to_numpy().astype(np.float32).reshape(-1, k)
        order = np.argsort(-probs, axis=1, kind="stable")
        moved = (order != np.arange(k)[None, :]).any(axis=1)
        report.reordered = int(moved.sum())
        if report.reordered:
            experts = np.take_along_axis(experts, order, axis=1)
            probs = np.take_along_axis(probs, order, axis=1)
    else:
        probs = np.full(experts.shape, 1.0 / k, np.float32)
        report.notes.append(f"no probabilities in the source: every chosen expert gets 1/{k}")
    columns = {
        "seq": frame["seq"].to_numpy(),
        "stack": frame["__stack"].to_numpy(),
        "phase": frame["phase"].replace_strict({p: i for i, p in enumerate(PHASES)}, return_dtype=pl.Int8).to_numpy(),
        "step": frame["step"].to_numpy(),
        "pos": frame["pos"].to_numpy(),
        "layer": frame["layer"].to_numpy(),
        "token": frame["token"].fill_null(-1).to_numpy(),
        "experts": experts,
        "probs": probs,
        "dropped": frame["dropped"].fill_null(False).to_numpy(),
    }
    if (frame["token"].is_null()).all():
        report.notes.append("no token ids in the source: the token column is null")
    meta = make_meta(source, shape, resolved, opts, report)
    report.meta = meta
    return meta, columns


def make_meta(source: Source, shape: ModelShape, resolved: Resolved, opts: ImportOptions, report: ImportReport) -> TraceMeta:
    dtype = check_dtype(shape.dtype or "float32")
    activation = shape.activation or "unknown"
    if shape.d_model and shape.d_ff:
        params = expert_params(shape.d_model, shape.d_ff, activation)
        sizes = bytes_per_dtype(params)
    else:
        params, sizes = 0, {}
        report.notes.append(
            "expert size unknown (no d_model/d_ff): pass --model, --model-config or --d-model and --d-ff "
            "so the simulator can cost transfers"
        )
    if shape.activation is None and shape.d_model and shape.d_ff:
        report.notes.append("activation unknown: experts counted as two matrices (pass --activation silu-gated for gated experts)")
    stacks = {
        name: StackMeta(
            moe_layers=layers,
            experts=resolved.experts,
            top_k=resolved.top_k,
            block_indices=list(shape.block_indices.get(name, [])),
        )
        for name, layers in resolved.stacks.items()
    }
    try:
        from importlib.metadata import version

        pregate_version = version("pregate")
    except Exception:  # not installed as a distribution (running from a source tree)
        pregate_version = "unknown"
    names = [f.name for f in source.files]
    listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return TraceMeta(
        model_id=shape.model_id or "unknown",
        family=shape.family or "imported",
        stacks=stacks,
        d_model=int(shape.d_model or 0),
        d_ff=int(shape.d_ff or 0),
        activation=activation,
        gating=shape.gating or ("top1-softmax" if resolved.top_k == 1 else "topk-softmax"),
        expert_params=int(params),
        bytes_per_expert=sizes,
        dense_bytes_per_layer=dense_bytes(shape, dtype),
        dtype=dtype,
        ahead_distance=0,
        capacity={"kind": "unknown"},
        tokenizer=shape.tokenizer or "",
        corpus=f"imported {opts.format}: {listed}",
        tracer_version=f"pregate-import {pregate_version}",
        prob_mantissa_bits=opts.prob_bits,
        extra={
            "imported": {
                "format": opts.format,
                "sources": names,
                "records": report.records,
                "exact_duplicates": report.exact_duplicates,
                "on_duplicate": opts.on_duplicate,
                "on_mismatch": opts.on_mismatch,
                "mismatched_sequences": report.mismatch_sequences,
                "inferred": list(report.inferred),
            }
        },
    )


def write_trace(out: str | Path, meta: TraceMeta, columns: dict, opts: ImportOptions, report: ImportReport) -> Path:
    """Write the sorted rows as parts of at most ``opts.part_rows`` rows, each atomically."""
    from pregate.traces.writer import TraceWriter, build_table

    out = Path(out)
    check_output(out, opts.overwrite)
    writer = TraceWriter(out, meta, overwrite=opts.overwrite)
    n = len(columns["seq"])
    index = 0
    for start in range(0, n, opts.part_rows):
        chunk = {k: v[start : start + opts.part_rows] for k, v in columns.items()}
        writer.write(index, build_table(meta, **chunk))
        index += 1
    report.parts = index
    report.out = str(out)
    return out


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse to mix an import into an existing trace (checked before any reading)."""
    if out.exists() and not out.is_dir():
        raise TraceError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.glob("part-*.parquet")) and not overwrite:
        raise TraceError(f"{out} already holds a trace; pass --overwrite to replace it")


# ---- record formats (jsonl, parquet): one record per (sequence, token, layer) ----------------


def expand_sources(paths: list[str | Path], suffixes: tuple[str, ...], what: str) -> list[Path]:
    """Files named on the command line; a folder stands for its files with ``suffixes`` (sorted)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(suffixes))
            if not found:
                raise TraceError(f"{path} holds no {what} files ({', '.join(suffixes)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise TraceError(f"source not found: {path}")
    if not files:
        raise TraceError("no source files given")
    return files


def read_records(
    files: list[Path],
    opts: ImportOptions,
    load: Callable[[Path], pl.DataFrame],
    locate: Locator,
) -> Source:
    """Read record-per-row files with ``load`` and map their fields (see :class:`ColumnMap`)."""
    frames, found_any = [], {}
    notes: list[str] = []
    for index, path in enumerate(files):
        frame = load(path)
        if frame.height == 0:
            notes.append(f"{path.name} holds no records")
            continue
        canon, found = canonical(frame, index, path, opts, locate)
        frames.append(canon)
        for role, has in found.items():
            found_any.setdefault(role, set()).add(has)
    if not frames:
        raise TraceError(f"no records in {', '.join(str(f) for f in files)}")
    for role in ("pos", "probs"):
        if len(found_any[role]) > 1:
            raise TraceError(f"some files have a '{role}' field and others do not; map it the same way in every file")
    if not any(found_any["seq"]):
        notes.append("no sequence field: all records are one sequence (map one with --seq FIELD)")
    if not any(found_any["pos"]):
        notes.append("no position field: tokens are numbered in record order within each sequence and layer")
    return Source(
        files=files,
        frame=concat_sources(frames),
        locate=locate,
        has_pos=True in found_any["pos"],
        has_probs=True in found_any["probs"],
        notes=notes,
    )
