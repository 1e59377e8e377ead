"""From canonical records to a trace: checks, shape resolution, duplicates, steps, metadata, writing.

The format modules read their files into the canonical frame of
:mod:`.source`; :func:`import_frames` then checks the records, resolves the
model shape, removes duplicates, finds tokens where the log has no positions
(:mod:`.order`), handles layers that disagree (:mod:`.align`), numbers the
steps and builds the metadata (see the package docstring for the rules).
"""

from __future__ import annotations

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
from pregate.traces.importers.options import (  # noqa: F401  (re-exported for the format modules)
    DEFAULT_LAYER_PATTERN,
    DEFAULT_PART_ROWS,
    ON_DUPLICATE,
    ON_MISMATCH,
    ROLES,
    SEQ_JOIN,
    ColumnMap,
    ImportOptions,
)
from pregate.traces.importers.align import align
from pregate.traces.importers.order import execution_order, fixed_blocks
from pregate.traces.importers.report import ImportReport
from pregate.traces.importers.source import (  # noqa: F401  (re-exported for the format modules)
    Locator,
    Source,
    _first_bad,
    canonical,
    concat_sources,
    expand_sources,
    layer_from_name,
    layer_from_path,
    read_records,
)
from pregate.traces.schema import PHASES, STACKS, StackMeta, TraceMeta

_INT32_MAX = 2**31 - 1
# How many affected sequences a message lists before saying "and N more".
_LIST_AT_MOST = 3


# ---- from canonical records to a trace ------------------------------------------------


class _Checker:
    def __init__(self, source: Source, report: ImportReport | None = None):
        self.source = source
        self.report = report

    def fail_on(self, frame: pl.DataFrame, condition: pl.Expr, message: Callable[[dict], str]) -> None:
        hit = frame.with_row_index("__i").filter(condition.fill_null(False)).head(1)
        if hit.height:
            row = hit.row(0, named=True)
            raise TraceError(f"{self.source.locate(int(row['__file']), int(row['__rec']))}: {message(row)}")


def _normalise_seq(frame: pl.DataFrame, report: ImportReport) -> pl.DataFrame:
    """Sequence ids as int64; string or composite keys are numbered and kept as labels."""
    notes = report.notes
    seq = frame["seq"]
    if seq.dtype == pl.String:
        as_int = seq.cast(pl.Int64, strict=False)
        if as_int.null_count() == seq.null_count():
            frame = frame.with_columns(seq=as_int)
        else:
            order = seq.drop_nulls().unique(maintain_order=True)
            mapping = dict(zip(order.to_list(), range(len(order))))
            report.seq_labels = order.to_list()
            notes.append(f"sequence keys are not numbers: numbered 0..{len(order) - 1} in order of first appearance "
                         "(the keys are kept in the metadata, extra.imported.sequences)")
            return frame.with_columns(pl.col("seq").replace_strict(mapping, default=None, return_dtype=pl.Int64))
    seq = frame["seq"]
    if len(seq) and seq.drop_nulls().len() and (seq.max() > _INT32_MAX or seq.min() < -_INT32_MAX):
        notes.append("sequence ids exceed 32 bits: renumbered 0.. in the order of the ids")
        report.seq_labels = [str(v) for v in seq.drop_nulls().unique().sort().to_list()]
        frame = frame.with_columns((pl.col("seq").rank("dense") - 1).cast(pl.Int64))
    return frame


def _check_records(frame: pl.DataFrame, check: _Checker, source: Source, shape: ModelShape, has_pos: bool) -> None:
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
    if has_pos:
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
    block_indices: dict[str, list[int]] = field(default_factory=dict)


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
    first = repeated.row(0, named=True)
    twin = repeated.filter(
        (pl.col("seq") == first["seq"]) & (pl.col("stack") == first["stack"])
        & (pl.col("pos") == first["pos"]) & (pl.col("layer") == first["layer"])
    ).row(1, named=True)
    loc = check.source.locate
    at = (f"first seq {report.label(first['seq'])} pos {first['pos']} layer {first['layer']} at "
          f"{loc(first['__file'], first['__rec'])} and {loc(twin['__file'], twin['__rec'])}")
    differ = _differing_fields(check.source, opts, first, twin)
    apart = ""
    if differ:
        fields_ = opts.columns.seq_fields() or []
        key = ",".join([*differ[:1], *fields_]) if fields_ else differ[0]
        apart = (f"; the two records differ in field(s) {', '.join(differ)}, so they may be different sequences: "
                 f"pass --seq {key} to keep them apart")
    if opts.on_duplicate == "error":
        raise TraceError(
            f"{keys} key(s) appear more than once with different content, {at}{apart}; "
            "if they really are the same token given twice, --on-duplicate first or last keeps one"
        )
    if differ:
        report.notes.append(f"--on-duplicate {opts.on_duplicate} merged {keys} key(s) given twice, {at}{apart}")
    kept = frame.unique(subset=list(KEY), keep=opts.on_duplicate, maintain_order=True)
    report.conflict_records_dropped = frame.height - kept.height
    return kept


def _flag_token_like_positions(frame: pl.DataFrame, opts: ImportOptions, report: ImportReport) -> None:
    """Say so when the token field counts 0, 1, 2, ... like a position (logs call positions token_idx)."""
    name = opts.columns.token
    if name is None or frame["token"].is_null().all():
        return
    counting = frame.sort("seq", "stack", "layer", "pos").select(
        (pl.col("token") == pl.int_range(pl.len()).over("seq", "stack", "layer")).all()
    ).item()
    if counting and frame.height > 1:
        report.notes.append(
            f"--token {name}: its values count 0, 1, 2, ... in every sequence and layer, like positions; --token is "
            f"the vocabulary id of the token, a position field is mapped with --pos {name}"
        )


def _differing_fields(source: Source, opts: ImportOptions, a: dict, b: dict) -> list[str]:
    """Unmapped source fields whose values differ between two records of one key (a hidden sequence key)."""
    if source.raw is None:
        return []
    try:
        ra, rb = source.raw(int(a["__file"]), int(a["__rec"])), source.raw(int(b["__file"]), int(b["__rec"]))
    except Exception:  # the hint is a courtesy; the error stands without it
        return []
    cols = opts.columns
    mapped = set(cols.seq_fields() or ["seq"])
    mapped |= {getattr(cols, r) or r for r in ROLES if r != "seq"}
    out = []
    for name in ra:
        if name in mapped or name not in rb:
            continue
        va, vb = ra[name], rb[name]
        if isinstance(va, (list, dict)) or isinstance(vb, (list, dict)):
            continue
        if va != vb:
            out.append(name)
    return out


def import_frames(source: Source, shape: ModelShape, opts: ImportOptions, report: ImportReport) -> tuple[TraceMeta, dict]:
    """Clean the canonical records and return the trace metadata and its sorted column arrays."""
    frame = source.frame
    report.files = len(source.files)
    report.records = frame.height
    report.notes.extend(source.notes)
    if not frame.height:
        raise TraceError(f"no records in {', '.join(str(f) for f in source.files)}")
    check = _Checker(source, report)
    frame = frame.with_columns(pl.col("stack").fill_null(opts.default_stack))
    has_pos = source.has_pos
    if opts.rows_per_seq is not None:
        if has_pos:
            raise TraceError("--rows-per-seq numbers the tokens of each block; the source has a position field too "
                             "(drop --rows-per-seq, or map --pos to a field that is absent)")
        frame = fixed_blocks(frame, opts, report, source.locate)
        has_pos = True
    elif opts.order == "execution":
        frame = execution_order(frame, report)
        has_pos = False  # inferred positions: duplicates cannot be told from tokens
    frame = _normalise_seq(frame, report)
    if source.seq_labels is not None and report.seq_labels is None:
        report.seq_labels = list(source.seq_labels)
    _check_records(frame, check, source, shape, has_pos and opts.order != "execution")
    resolved = _resolve(frame, check, shape, report)
    if has_pos and opts.order != "execution":
        frame = _dedupe(frame, check, opts, report)
    elif opts.order != "execution":
        # Tokens are numbered in record order within each (sequence, stack, layer).
        frame = frame.with_columns(pos=pl.int_range(pl.len()).over("seq", "stack", "layer").cast(pl.Int64))
    _flag_token_like_positions(frame, opts, report)
    report.read_sequences = frame["seq"].n_unique()
    report.read_tokens = frame.select("seq", "stack", "pos").unique().height
    frame = align(frame, opts, report, has_pos or opts.order == "execution", source.locate)
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
            lambda r, what=what: f"the layers of seq {report.label(r['seq'])} position {r['pos']} disagree about its {what}",
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
            lowest = int(frame.filter(pl.col("stack") == name)["layer"].min())
            hint = (f"; if the source numbers blocks from {lowest}, pass --layer-offset {lowest} (or --layer-map)"
                    if lowest > 0 and not opts.remaps_layers else "")
            report.notes.append(f"{name}: records for {count} of its {resolved.stacks[name]} MoE layers{hint}")
    for name, blocks in (source.block_indices or {}).items():
        if name in resolved.stacks and len(blocks) == resolved.stacks[name]:
            resolved.block_indices[name] = list(blocks)
    if opts.remaps_layers:
        # The source's own numbers are block indices of the MoE layers (Layer_2.csv is block 2).
        pairs = frame.select("stack", "layer", "__src_layer").unique()
        for name, layers in resolved.stacks.items():
            blocks = dict(pairs.filter(pl.col("stack") == name).select("layer", "__src_layer").rows())
            if name not in shape.block_indices and sorted(blocks) == list(range(layers)):
                resolved.block_indices[name] = [int(blocks[i]) for i in range(layers)]
        shown = ", ".join(f"{s} {b[0]}..{b[-1]} -> 0..{len(b) - 1}" for s, b in resolved.block_indices.items())
        if shown:
            report.notes.append(f"source layer numbers taken as block indices: {shown}")

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
        params = shape.expert_params or expert_params(shape.d_model, shape.d_ff, activation)
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
            block_indices=list(shape.block_indices.get(name, resolved.block_indices.get(name, []))),
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
                "on_missing": opts.on_missing,
                "order": opts.order,
                "seq_fields": opts.columns.seq_fields(),
                "rows_per_seq": opts.rows_per_seq,
                "layer_offset": opts.layer_offset,
                "layer_map": {str(k): v for k, v in opts.layer_map.items()} if opts.layer_map else None,
                "mismatched_sequences": report.mismatch_sequences,
                "cells_cut": report.cells_cut,
                "records_cut": report.records_cut,
                "holes": report.holes,
                "inferred": list(report.inferred),
                **({"sequences": list(report.seq_labels)} if report.seq_labels is not None else {}),
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
