"""Reading sources into the canonical frame: field mapping, layers from fields or paths, sequence keys.

A format module reads its files into one *canonical* polars frame, one row per
source record, with these columns (``__file``/``__rec`` locate the record for
error messages):

``__file`` (u32: index into the source list), ``__rec`` (i64: record within the file),
``seq`` (i64 or str), ``stack`` (str or null), ``phase`` (str or null), ``layer`` (i64),
``__src_layer`` (i64: the layer number the source gave, before --layer-offset/--layer-map),
``pos`` (i64 or null), ``token`` (i64 or null), ``experts`` (list<i64>),
``probs`` (list<f64> or null), ``dropped`` (bool or null).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from pregate.traces.errors import TraceError
from pregate.traces.importers.options import ROLES, SEQ_JOIN, ImportOptions

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
    # (file index, record index) -> the record's raw fields, read again only for error hints
    raw: Callable[[int, int], dict] | None = None
    seq_labels: list[str] | None = None  # the source's key of each sequence id, where the format numbers them
    block_indices: dict[str, list[int]] | None = None  # blocks of the MoE layers, where the format shows them


# ---- reading helpers used by the format modules ------------------------------------


def layer_from_name(path: Path, pattern: str) -> int | None:
    match = re.search(pattern, path.name, flags=re.IGNORECASE)
    return int(match.group(1)) if match else None


def layer_from_path(path: Path, opts: ImportOptions) -> int | None:
    """The layer number a file's path states: ``--layer-from-path`` on the whole path, else the name."""
    if opts.layer_from_path is not None:
        match = re.search(opts.layer_from_path, path.as_posix())
        return int(match.group(1)) if match else None
    return layer_from_name(path, opts.layer_pattern)


def _seq_series(frame: pl.DataFrame, names: list[str], path: Path) -> pl.Series:
    """The sequence key: one field as it is, several joined into one readable label."""
    available = list(frame.columns)
    for name in names:
        if name not in available:
            raise TraceError(f"{path}: no field '{name}' for seq (fields: {', '.join(available) or 'none'})")
    if len(names) == 1:
        seq = frame[names[0]]
        return seq.cast(pl.Int64) if seq.dtype.is_integer() else seq.cast(pl.String)
    parts = [pl.col(n).cast(pl.String) for n in names]
    # A record missing any part of the key has no key (reported as such, not merged).
    return frame.select(
        pl.when(pl.any_horizontal([p.is_null() for p in parts])).then(None)
        .otherwise(pl.concat_str(parts, separator=SEQ_JOIN)).alias("seq")
    ).to_series()


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
    seq_names = cols.seq_fields()
    picked = {role: cols.pick(role, available, path) for role in ROLES if role != "seq"}
    picked["seq"] = seq_names if seq_names is not None else (["seq"] if "seq" in available else None)

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
            from_source = layer_const is None
            if from_source:
                layer_const = layer_from_path(path, opts)
            if layer_const is None:
                where_from = (f"matching --layer-from-path {opts.layer_from_path!r}" if opts.layer_from_path
                              else "number in the file name")
                raise TraceError(
                    f"{path}: cannot tell the MoE layer of its records (no field 'layer' and no layer "
                    f"{where_from}); pass --layer FIELD, --layer N or --layer-from-path REGEX"
                )
            layer_series = pl.Series("layer", np.full(n, layer_const, np.int64))
            if not from_source:
                # --layer N names the MoE layer itself: no offset or map applies.
                layer_series = layer_series.alias("__const")
    src_layer = layer_series
    if opts.remaps_layers and layer_series.name != "__const":
        layer_series = _map_layers(layer_series, opts, path, where_rec)
    out: dict[str, pl.Series] = {
        "__file": pl.Series("__file", np.full(n, file_index, np.uint32)),
        "__rec": rec,
    }
    if picked["seq"] is not None:
        out["seq"] = _seq_series(frame, picked["seq"], path)
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
    out["__src_layer"] = src_layer.cast(pl.Int64)
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


def _map_layers(layers: pl.Series, opts: ImportOptions, path: Path, where: Callable[[int], str]) -> pl.Series:
    """Source layer numbers (block indices, 1-based names) as MoE layers: --layer-offset or --layer-map."""
    values = layers.cast(pl.Int64)
    if opts.layer_map is not None:
        mapped = values.replace_strict(opts.layer_map, default=None, return_dtype=pl.Int64)
        row = _first_bad(mapped.is_null() & values.is_not_null())
        if row is not None:
            raise TraceError(f"{where(row)}: layer {values[row]} is not in --layer-map "
                             f"(it maps {', '.join(map(str, sorted(opts.layer_map)))})")
        return mapped.alias("layer")
    mapped = values - opts.layer_offset
    row = _first_bad(mapped < 0)
    if row is not None:
        raise TraceError(f"{where(row)}: layer {values[row]} minus --layer-offset {opts.layer_offset} is negative")
    return mapped.alias("layer")


def concat_sources(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Stack the files' canonical frames; seq ids become strings if any file has string ids."""
    if any(f.schema["seq"] == pl.String for f in frames):
        frames = [f.with_columns(pl.col("seq").cast(pl.String)) for f in frames]
    return pl.concat(frames, how="vertical_relaxed")


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
    if not any(found_any["seq"]) and opts.rows_per_seq is None:
        notes.append("no sequence field: all records are one sequence (map one with --seq FIELD)")
    if not any(found_any["pos"]) and opts.rows_per_seq is None and opts.order != "execution":
        notes.append("no position field: tokens are numbered in record order within each sequence and layer")
    return Source(
        files=files,
        frame=concat_sources(frames),
        locate=locate,
        has_pos=True in found_any["pos"],
        has_probs=True in found_any["probs"],
        notes=notes,
        raw=lambda f, r: load(files[f]).row(r, named=True),
    )
