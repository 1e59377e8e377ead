"""CSV with one row per token and one column per expert holding its router score.

Dumps of router logits (or of gate probabilities, ``--scores-are-probs``) look
like this, one file per MoE layer (``layer3.csv``) or with a layer column::

    seq,pos,token,e0,e1,e2,e3
    0,0,101,1.2,-0.3,0.8,0.1

Expert columns are those whose whole name matches ``--expert-columns`` (by
default ``e3``, ``expert_3``, ``exp3`` or ``3``; the number is the expert id,
numbered 0..E-1). The top-k experts are the k largest scores (ties: lower id
first). Their probabilities are the softmax over all E scores, unless the
scores already are probabilities; with a renormalising gating (for example
``topk-softmax-renorm`` of Mixtral and Qwen3) the k probabilities are then
divided by their sum, as the model does.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl

from pregate.traces.errors import TraceError
from pregate.traces.importers.common import (
    ROLES,
    ImportOptions,
    Source,
    canonical,
    concat_sources,
    expand_sources,
)
from pregate.traces.importers.model_shapes import ModelShape

SUFFIXES = (".csv", ".tsv")
DEFAULT_EXPERT_COLUMNS = r"(?:experts?|exp|e)?[_-]?(\d+)"


def _load(path: Path) -> pl.DataFrame:
    try:
        sep = "\t" if path.suffix.lower() == ".tsv" else ","
        return pl.scan_csv(path, separator=sep, infer_schema_length=10_000).collect()
    except Exception as exc:  # polars raises several types for malformed CSV
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceError(f"{path}: not readable as CSV ({first})") from None


def _expert_columns(frame: pl.DataFrame, opts: ImportOptions, path: Path) -> list[str]:
    pattern = re.compile(opts.expert_columns or DEFAULT_EXPERT_COLUMNS, re.IGNORECASE)
    mapped = {getattr(opts.columns, r) or r for r in ROLES if r != "seq"} | set(opts.columns.seq_fields() or ["seq"])
    found = {}
    for name in frame.columns:
        match = pattern.fullmatch(name)
        if match and name not in mapped:
            found[int(match.group(1))] = name
    if not found:
        raise TraceError(
            f"{path}: no expert score columns (columns: {', '.join(frame.columns)}); "
            "name them with --expert-columns REGEX"
        )
    ids = sorted(found)
    if ids != list(range(len(ids))):
        raise TraceError(
            f"{path}: expert columns must be numbered 0..{len(ids) - 1} without gaps; found ids {ids[0]}..{ids[-1]} "
            f"in {len(ids)} columns"
        )
    return [found[i] for i in ids]


def _top_k(scores: np.ndarray, k: int, opts: ImportOptions, renorm: bool) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    if opts.scores_are_probs:
        probs = scores
    else:
        shifted = scores - scores.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        probs = exp / exp.sum(axis=1, keepdims=True)
    top = np.take_along_axis(probs, order, axis=1)
    if renorm:
        total = top.sum(axis=1, keepdims=True)
        top = np.divide(top, total, out=np.zeros_like(top), where=total > 0)
    return order, np.clip(top, 0.0, 1.0)


def read(paths, opts: ImportOptions, shape: ModelShape) -> Source:
    files = expand_sources(paths, SUFFIXES, "CSV")
    k = shape.top_k
    if k is None:
        raise TraceError("csv-dense needs the model's top-k to pick experts from scores: pass --top-k K or --model NAME")
    renorm = (shape.gating or "").endswith("-renorm")

    def locate(file_index: int, record: int) -> str:
        return f"{files[file_index]}: line {record + 2}"  # line 1 is the header

    frames, notes, n_experts, found_any = [], [], None, {}
    for index, path in enumerate(files):
        frame = _load(path)
        if frame.height == 0:
            notes.append(f"{path.name} holds no rows")
            continue
        columns = _expert_columns(frame, opts, path)
        if n_experts is None:
            n_experts = len(columns)
        elif len(columns) != n_experts:
            raise TraceError(f"{path}: {len(columns)} expert columns, but {files[0].name} has {n_experts}")
        if shape.experts is not None and len(columns) != shape.experts:
            raise TraceError(f"{path}: {len(columns)} expert columns, but the model has {shape.experts} experts")
        if k > len(columns):
            raise TraceError(f"{path}: top-k {k} exceeds the {len(columns)} expert columns")
        raw = frame.select(columns)
        cast = raw.select(pl.all().cast(pl.Float64, strict=False))
        bad = cast.select(pl.any_horizontal([pl.col(c).is_null() | pl.col(c).is_nan() for c in columns])).to_series()
        hits = bad.arg_true()
        if len(hits):
            row = int(hits[0])
            col = next(c for c in columns if cast[c][row] is None or np.isnan(cast[c][row]))
            raise TraceError(f"{locate(index, row)}: score {raw[col][row]!r} in column '{col}' is not a number")
        scores = cast.to_numpy()
        if opts.scores_are_probs:
            out = np.flatnonzero(((scores < 0) | (scores > 1)).any(axis=1))
            if len(out):
                raise TraceError(
                    f"{locate(index, int(out[0]))}: score outside [0, 1] although --scores-are-probs was given"
                )
        ids, probs = _top_k(scores, k, opts, renorm)
        canon, found = canonical(
            frame.drop(columns),
            index,
            path,
            opts,
            locate,
            experts=pl.Series("experts", ids.astype(np.int64)),
            probs=pl.Series("probs", probs.astype(np.float64)),
        )
        frames.append(canon)
        for role, has in found.items():
            found_any.setdefault(role, set()).add(has)
    if not frames:
        raise TraceError(f"no rows in {', '.join(str(f) for f in files)}")
    if len(found_any["pos"]) > 1:
        raise TraceError("some files have a 'pos' column and others do not; map it the same way in every file")
    how = "the scores as probabilities" if opts.scores_are_probs else f"softmax over the {n_experts} scores"
    notes.append(f"top-{k} of {n_experts} scores per token; probabilities: {how}"
                 + (", renormalised over the top-k" if renorm else ""))
    if not any(found_any["seq"]) and opts.rows_per_seq is None:
        notes.append("no sequence column: all rows are one sequence (map one with --seq FIELD)")
    if not any(found_any["pos"]) and opts.rows_per_seq is None and opts.order != "execution":
        notes.append("no position column: tokens are numbered in row order within each sequence and layer")
    return Source(
        files=files,
        frame=concat_sources(frames),
        locate=locate,
        has_pos=True in found_any["pos"],
        has_probs=True,
        notes=notes,
        experts=n_experts,
        raw=lambda f, r: _load(files[f]).row(r, named=True),
    )
