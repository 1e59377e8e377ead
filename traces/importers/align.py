"""Layers of a sequence that disagree about its tokens: fail, drop, or cut to what can be trusted.

Why cutting and not matching by position: logging tools that lose a record
often renumber the records after it (``token_idx`` counts what the tool wrote,
not what the model ran), so a layer that lost a record has every later record
one position early. Keeping "the positions present in every layer" then keeps
a shifted layer, silently. A *cell* (one sequence, one layer, one segment:
the whole sequence, or one forward pass in execution order) that holds fewer
records than its segment has tokens is cut at its first gap:

- a visible gap in its positions;
- else, with token ids, the first position whose token differs from the one
  the other layers hold there (a shift shows as a token from one place later);
- else the gap cannot be located (renumbered and no token ids): the cell is
  cut whole.

Records from the cut on are dropped. Then, by default, only tokens present in
every layer are kept (``--on-missing drop``); with ``--on-missing hole`` the
others stay, and a layer without a token's record is a hole (the simulator
runs that layer step without the token).
"""

from __future__ import annotations

import polars as pl

from pregate.traces.errors import TraceError
from pregate.traces.importers.options import ImportOptions
from pregate.traces.importers.report import ImportReport

_LIST_AT_MOST = 3


def _layer_sets(frame: pl.DataFrame) -> dict[str, list[int]]:
    return {s: sorted(frame.filter(pl.col("stack") == s)["layer"].unique().to_list()) for s in frame["stack"].unique()}


def _file_names(frame: pl.DataFrame, locate) -> str:
    names = sorted({locate(int(f), 0).rsplit(": ", 1)[0].replace("\\", "/").rsplit("/", 1)[-1]
                    for f in frame["__file"].unique().to_list()})
    return ", ".join(names[:2]) + (f" and {len(names) - 2} more" if len(names) > 2 else "")


def _describe(counts: pl.DataFrame, layers: list[int], label: str, stack: str, rows: pl.DataFrame, locate) -> str:
    """'seq gsm8k/3 (decoder): layer 5 has 11 tokens, layer 7 none, other layers 12 (layer 5 in a.jsonl)'."""
    per_layer = dict(zip(counts["layer"].to_list(), counts["n"].to_list()))
    values = [per_layer.get(layer, 0) for layer in layers]
    common = max(set(values), key=lambda v: (values.count(v), v))  # ties: the fuller layers
    odd_layers = [layer for layer in layers if per_layer.get(layer, 0) != common]
    odd = [f"layer {layer} {'has ' + str(per_layer[layer]) + ' tokens' if per_layer.get(layer) else 'has none'}"
           for layer in odd_layers]
    if not odd:
        return f"seq {label} ({stack}): same counts, different token positions across layers ({_file_names(rows, locate)})"
    in_files = rows.filter(pl.col("layer").is_in(odd_layers))
    where = f" (in {_file_names(in_files, locate)})" if in_files.height else ""
    return f"seq {label} ({stack}): {', '.join(odd)}, other layers {common}{where}"


def align(frame: pl.DataFrame, opts: ImportOptions, report: ImportReport, has_pos: bool, locate) -> pl.DataFrame:
    """Apply ``--on-mismatch`` / ``--on-missing`` to the cleaned records (see the module docstring)."""
    if "__seg" not in frame.columns:
        frame = frame.with_columns(__seg=pl.lit(0, pl.Int64))
    layer_sets = _layer_sets(frame)
    n_layers = pl.col("stack").replace_strict({s: len(v) for s, v in layer_sets.items()}, return_dtype=pl.Int64)
    tokens = frame.group_by("seq", "stack", "pos").agg(pl.len().alias("n")).with_columns(full=pl.col("n") == n_layers)
    bad = tokens.filter(~pl.col("full")).select("seq", "stack").unique().sort("seq", "stack")
    if not bad.height:
        return frame.drop("__seg")
    report.mismatch_sequences = bad.select("seq").n_unique()
    affected = frame.join(bad, on=["seq", "stack"])
    per_layer = affected.group_by("seq", "stack", "layer").agg(pl.len().alias("n"))
    shown = []
    for seq, stack in bad.head(_LIST_AT_MOST).iter_rows():
        counts = per_layer.filter((pl.col("seq") == seq) & (pl.col("stack") == stack)).sort("layer")
        rows = affected.filter((pl.col("seq") == seq) & (pl.col("stack") == stack))
        shown.append(_describe(counts, layer_sets[stack], report.label(seq), stack, rows, locate))
    if bad.height > _LIST_AT_MOST:
        shown.append(f"and {bad.height - _LIST_AT_MOST} more")
    report.mismatched = shown
    if opts.on_mismatch == "fail" and not opts.aligning:
        how = "" if has_pos else " (tokens are counted in record order: no position field)"
        raise TraceError(
            f"{report.mismatch_sequences} sequence(s) have layers whose tokens disagree{how}: {'; '.join(shown)}; "
            "pass --on-mismatch drop (drop those sequences) or keep-aligned (cut each layer that lost records at "
            "its first gap), and --on-missing hole to keep tokens that miss a layer"
        )
    before_tokens = frame.select("seq", "stack", "pos").unique().height
    before_seqs = frame["seq"].n_unique()
    if opts.on_mismatch == "drop":
        kept = frame.join(bad.select("seq").unique(), on="seq", how="anti")
        if not kept.height:
            raise TraceError(
                f"every sequence ({before_seqs}) has a layer that lost records, so --on-mismatch drop leaves "
                "nothing; pass --on-mismatch keep-aligned (cut each such layer at its first gap), with "
                "--on-missing hole to keep the tokens the other layers hold"
            )
    else:
        kept = _cut(frame, opts, report, locate)
        if opts.on_missing == "hole":
            present = kept.group_by("seq", "stack", "pos").agg(pl.len().alias("n"))
            report.holes = int(present.select((n_layers - pl.col("n")).sum()).item() or 0) if present.height else 0
        else:
            present = kept.group_by("seq", "stack", "pos").agg(pl.len().alias("n")).filter(pl.col("n") == n_layers)
            kept = kept.join(present.select("seq", "stack", "pos"), on=["seq", "stack", "pos"], how="semi")
        if not has_pos:
            report.notes.append("keep-aligned without a position field matched tokens across layers by record order")
        if not kept.height:
            raise TraceError(
                f"nothing is left once the layers that lost records are cut ({report.cells} cell(s); "
                f"{'; '.join(report.cut)}): no token is in every layer; pass --on-missing hole to keep the tokens "
                "that the other layers hold"
            )
    report.mismatch_records_dropped = frame.height - kept.height
    report.mismatch_tokens_dropped = before_tokens - kept.select("seq", "stack", "pos").unique().height
    report.mismatch_sequences_dropped = before_seqs - kept["seq"].n_unique()
    return kept.drop("__seg")


def _cut(frame: pl.DataFrame, opts: ImportOptions, report: ImportReport, locate) -> pl.DataFrame:
    """Drop every record of a short cell from its first gap on; count what was cut."""
    seg = ["seq", "stack", "__seg"]
    cell = [*seg, "layer"]
    universe = (
        frame.select(*seg, "pos").unique().sort(*seg, "pos")
        .with_columns(__u=pl.int_range(pl.len()).over(seg))
    )
    sizes = universe.group_by(seg).agg(pl.len().alias("__size"))
    work = (
        frame.with_row_index("__row")
        .join(universe, on=[*seg, "pos"], how="left")
        .join(sizes, on=seg, how="left")
        .sort(*cell, "pos")
        .with_columns(__c=pl.int_range(pl.len()).over(cell), __have=pl.len().over(cell))
    )
    short = work.filter(pl.col("__have") < pl.col("__size"))
    if not short.height:
        return frame
    has_tokens = frame["token"].is_not_null().any()
    # Before the first visible gap, the i-th record of the cell sits at the i-th position of the segment.
    ok = pl.col("__u") == pl.col("__c")
    # Without a visible gap the lost record may be anywhere: nothing of the cell can be trusted ...
    gap_visible = pl.col("__have") < pl.col("__u").max().over(cell) + 1
    if has_tokens:
        # ... unless token ids show where the shift starts: compared with the layers that lost
        # nothing (all layers where every one lost something), the first differing token.
        intact = work.filter(pl.col("__have") == pl.col("__size"))
        voters = intact if intact.height else work
        consensus = (
            voters.filter(pl.col("token").is_not_null())
            .group_by("seq", "stack", "pos", "token").agg(pl.len().alias("__votes"))
            .sort("__votes", "token", descending=[True, False])
            .unique(subset=["seq", "stack", "pos"], keep="first")
            .select("seq", "stack", "pos", pl.col("token").alias("__consensus"))
        )
        short = short.join(consensus, on=["seq", "stack", "pos"], how="left")
        known = pl.col("token").is_not_null() & pl.col("__consensus").is_not_null()
        ok = ok & pl.when(known).then(pl.col("token") == pl.col("__consensus")).otherwise(gap_visible)
    else:
        ok = ok & gap_visible
    short = short.sort(*cell, "pos").with_columns(__keep=ok.cast(pl.Int64).cum_prod().over(cell).cast(pl.Boolean))
    cut_rows = short.filter(~pl.col("__keep"))
    cells = short.group_by(cell, maintain_order=True).agg(
        pl.len().alias("have"), pl.col("__size").first().alias("size"), (~pl.col("__keep")).sum().alias("cut"),
        pl.col("pos").filter(~pl.col("__keep")).min().alias("from"), pl.first("__file"),
    )
    report.cells = cells.height
    report.cells_cut = int((cells["cut"] > 0).sum())
    report.cells_unlocated = int((cells["cut"] == cells["have"]).sum())
    report.records_cut = cut_rows.height
    for r in cells.head(_LIST_AT_MOST).iter_rows(named=True):
        file = locate(int(r["__file"]), 0).rsplit(": ", 1)[0].replace("\\", "/").rsplit("/", 1)[-1]
        what = (f"cut from position {r['from']} ({r['cut']} record(s))" if r["cut"] and r["cut"] < r["have"]
                else "cut whole" if r["cut"] else "kept (lost records at its end)")
        report.cut.append(f"seq {report.label(r['seq'])} layer {r['layer']} in {file}: "
                          f"{r['have']} of {r['size']} tokens, {what}")
    if cells.height > _LIST_AT_MOST:
        report.cut.append(f"and {cells.height - _LIST_AT_MOST} more")
    drop = cut_rows.select("__row")
    return frame.with_row_index("__row").join(drop, on="__row", how="anti").drop("__row")
