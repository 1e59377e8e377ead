"""Finding tokens where the log does not number them: fixed row blocks, execution order.

Two common log layouts carry no usable position field:

- *fixed blocks* (``--rows-per-seq N``): dense dumps that concatenate
  sequences of N tokens, so row r of each layer file is token ``r % N`` of
  sequence ``r // N``;
- *execution order* (``--order execution``): a hook that logs every router call
  as it happens writes, per sequence, the prompt's run of records for layer 0,
  then layer 1, ..., then one record per layer for each decode step, often with
  position 0 everywhere. A forward pass starts wherever the layer number goes
  down; the first pass is the prefill, each later one a decode step; a token's
  position is its place in its pass's run plus the tokens of earlier passes.

Both add the column ``__seg``: the stretch within which a lost record would
shift the records after it (a pass in execution order; the whole sequence
otherwise), which the alignment step uses to cut no more than it must.
"""

from __future__ import annotations

import polars as pl

from pregate.traces.importers.options import ImportOptions
from pregate.traces.importers.report import ImportReport


def fixed_blocks(frame: pl.DataFrame, opts: ImportOptions, report: ImportReport, locate) -> pl.DataFrame:
    """Row blocks of ``opts.rows_per_seq`` as sequences, numbered per (stack, layer) in file order."""
    n = opts.rows_per_seq
    idx = pl.int_range(pl.len()).over("stack", "layer")
    frame = frame.with_columns(seq=(idx // n).cast(pl.Int64), pos=(idx % n).cast(pl.Int64))
    counts = frame.group_by("stack", "layer").agg(pl.len().alias("n"), pl.first("__file")).sort("stack", "layer")
    ragged = counts.filter(pl.col("n") % n != 0)
    if ragged.height:
        r = ragged.row(0, named=True)
        report.notes.append(
            f"--rows-per-seq {n}: layer {r['layer']} has {r['n']} rows (in {locate(int(r['__file']), 0).split(':')[0]}), "
            f"not a multiple of {n}: its last sequence has {r['n'] % n} token(s)"
        )
    report.notes.append(f"sequences are blocks of {n} rows per layer (--rows-per-seq); positions 0..{n - 1} within each")
    return frame.with_columns(__seg=pl.lit(0, pl.Int64))


def execution_order(frame: pl.DataFrame, report: ImportReport) -> pl.DataFrame:
    """Passes, phases and true positions of records logged in the order the model ran them."""
    frame = frame.sort("__file", "__rec", maintain_order=True).with_columns(__order=pl.int_range(pl.len()))
    keys = ["seq", "stack"]
    prev = pl.col("layer").shift(1).over(keys)
    frame = frame.with_columns(__pass=(prev.is_not_null() & (pl.col("layer") < prev)).cast(pl.Int64).cum_sum().over(keys))
    frame = frame.with_columns(__run=pl.int_range(pl.len()).over(*keys, "__pass", "layer"))
    # A pass processes as many tokens as its longest run; the others lost records.
    sizes = (
        frame.group_by(*keys, "__pass").agg(pl.col("__run").max().alias("__n"))
        .sort(*keys, "__pass")
        .with_columns(__start=(pl.col("__n") + 1).cum_sum().over(keys) - (pl.col("__n") + 1))
    )
    frame = frame.join(sizes.select(*keys, "__pass", "__start"), on=[*keys, "__pass"], how="left")
    phase = pl.when(pl.col("__pass") == 0).then(pl.lit("prefill")).otherwise(pl.lit("decode"))
    frame = frame.with_columns(
        pos=(pl.col("__start") + pl.col("__run")).cast(pl.Int64),
        phase=pl.col("phase").fill_null(phase),
        __seg=pl.col("__pass"),
    ).sort("__order").drop("__order", "__pass", "__run", "__start")
    passes = sizes.height
    report.notes.append(
        f"execution order: {passes} forward pass(es) found where the layer number goes down; the first of each "
        "sequence is its prefill, each later one a decode step; positions from the passes (a position field is ignored)"
    )
    return frame
