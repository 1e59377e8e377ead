"""Ranking sweep results: which setting is fastest, and how far from the bounds.

Used by ``pregate sweep``, ``pregate demo``, ``pregate report`` and
``pregate recommend``: one place decides how a point is named and ordered.
"""

from __future__ import annotations

import polars as pl


def policy_label(speculation: str, cache_policy: str, buffering: str = "cache", compression: str = "none",
                 per_layer: bool = False) -> str:
    """``layer_minus_1 + lfu`` and, when not the default, the buffering, compression and per-layer split."""
    if buffering == "resident":
        return "all resident"
    label = f"{speculation} + {cache_policy}"
    if per_layer:
        label += " (per layer)"
    if buffering not in ("cache",):
        label += f", {buffering}"
    if compression != "none":
        label += f", {compression}"
    return label


def _over_memory(frame: pl.DataFrame) -> pl.Series:
    """The over-memory flag of each point (results from before the flag existed: from fits_gpu_memory)."""
    if "over_memory" in frame.columns:
        return frame["over_memory"].fill_null(False)
    if "fits_gpu_memory" in frame.columns:
        return ~frame["fits_gpu_memory"].fill_null(True)
    return pl.Series([False] * frame.height, dtype=pl.Boolean)


def with_labels(frame: pl.DataFrame) -> pl.DataFrame:
    """Adds ``policy`` (speculation + caching [+ buffering, compression]), ``gpu_gb``, ``over_memory``
    and ``pricing`` ("routing of X, priced as Y")."""
    labels = [
        policy_label(r["speculation"], r["cache_policy"], r["buffering"], r["compression"], r["per_layer"])
        for r in frame.select("speculation", "cache_policy", "buffering", "compression", "per_layer").iter_rows(named=True)
    ]
    if "pricing" in frame.columns:
        pricing = frame["pricing"].fill_null("")
    else:
        pricing = pl.Series([f"routing of {m}, priced as {m} (the trace's own sizes)" for m in frame["trace_model"]],
                            dtype=pl.String)
    return frame.with_columns(
        pl.Series("policy", labels, dtype=pl.String),
        (pl.col("peak_gpu_bytes") / 1e9).alias("gpu_gb"),
        _over_memory(frame).alias("over_memory"),
        pricing.alias("pricing"),
    )


def rank(frame: pl.DataFrame, include_over_memory: bool = False) -> pl.DataFrame:
    """Fastest first (tokens/s), ties by less GPU memory, then by key (a stable order).

    Points that do not fit the GPU's memory (``over_memory``) come after every
    point that fits, so "best" is always a setting that can run, unless
    ``include_over_memory``.
    """
    if frame.is_empty():
        return with_labels(frame) if "speculation" in frame.columns else frame
    labelled = with_labels(frame)
    if include_over_memory:
        return labelled.sort(["tokens_per_s", "peak_gpu_bytes", "key"], descending=[True, False, False],
                             nulls_last=True)
    return labelled.sort(["over_memory", "tokens_per_s", "peak_gpu_bytes", "key"],
                         descending=[False, True, False, False], nulls_last=True)


def fitting(ranked: pl.DataFrame, include_over_memory: bool = False) -> pl.DataFrame:
    """The points that may be called best: those that fit, unless ``include_over_memory``."""
    if include_over_memory or ranked.is_empty():
        return ranked
    return ranked.filter(~pl.col("over_memory"))


def _bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


FIXED = 10  # the columns always shown; the first two (policy, cache) are left-aligned


def _decode(row: dict, name: str):
    """The decode-only value; results stored before per-phase columns fall back to the all-passes one
    (for ``hit_rate`` that older value includes late hits)."""
    value = row.get(f"decode_{name}")
    return row[name] if value is None else value


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def format_ranking(ranked: pl.DataFrame, limit: int | None = 15) -> str:
    """A plain-text table: rank, policy, cache size, tokens/s, stall share, hit rate, bytes moved, bound ratios."""
    if ranked.is_empty():
        return "no points"
    if "over_memory" not in ranked.columns or "pricing" not in ranked.columns:
        ranked = with_labels(ranked)
    many = {c: ranked[c].n_unique() > 1 for c in ("pricing", "profile", "batch_size")}
    head = ranked if limit is None else ranked.head(limit)
    cols = []
    if many["pricing"]:
        cols.append(("priced as", 16, lambda r: str(r.get("priced_as") or r["trace_model"])[:15]))
    if "gpu_dtype" in ranked.columns and ranked["gpu_dtype"].n_unique() > 1:
        cols.append(("dtype", 10, lambda r: str(r["gpu_dtype"])))
    if many["profile"]:
        cols.append(("profile", 15, lambda r: str(r["profile"])[:14]))
    if many["batch_size"]:
        cols.append(("batch", 6, lambda r: str(r["batch_size"])))
    cols += [
        ("policy", 34, lambda r: r["policy"][:33]),
        ("cache", 14, lambda r: f"{r['cache']} ({r['cache_capacity_experts']})"),
        ("tok/s", 9, lambda r: f"{r['tokens_per_s']:.1f}" if r["tokens_per_s"] else "n/a"),
        ("stall", 7, lambda r: f"{_decode(r, 'stall_share'):.0%}"),
        ("hits", 6, lambda r: _pct(_decode(r, "hit_rate"))),
        ("late", 6, lambda r: _pct(r.get("decode_late_hit_rate"))),
        ("moved", 10, lambda r: _bytes(r["bytes_moved"])),
        ("x resident", 11, lambda r: f"{r['ratio_to_resident']:.2f}" if r["ratio_to_resident"] else "n/a"),
        ("x oracle", 9, lambda r: f"{r['ratio_to_oracle']:.2f}" if r["ratio_to_oracle"] else "n/a"),
        ("memory", 13, lambda r: "OVER MEMORY" if r["over_memory"] else "fits"),
    ]
    left = len(cols) - FIXED + 2  # the label columns, the policy and the cache size are left-aligned, numbers right
    lines = [f"  {p}" for p in dict.fromkeys(ranked["pricing"].to_list())]
    lines.append("  #  " + "".join(name.ljust(w) if i < left else name.rjust(w) for i, (name, w, _) in enumerate(cols)))
    for i, r in enumerate(head.iter_rows(named=True), 1):
        cells = [fn(r) for _, _, fn in cols]
        lines.append(f"{i:>3}  " + "".join(c.ljust(w) if j < left else c.rjust(w)
                                           for j, (c, (_, w, _)) in enumerate(zip(cells, cols))))
    if limit is not None and ranked.height > limit:
        lines.append(f"     ... {ranked.height - limit} more points")
    lines.append("  tok/s: decode tokens per second; stall: share of decode time waiting for copies (or for experts "
                 "computed on the CPU);\n  hits: decode requests resident when needed; late: decode requests still being copied when needed; moved: "
                 "bytes copied host->GPU (all passes); x resident / x oracle: decode step latency over\n  the "
                 "all-resident and the perfect-prediction (oracle+Belady) reference; memory: OVER MEMORY when dense "
                 "weights +\n  expert cache + working margin exceed the GPU's memory (ranked after the points that fit)")
    return "\n".join(lines)
