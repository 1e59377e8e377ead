"""A short description of a trace: what model, how much data, how compact."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pregate.traces.reader import open_trace
from pregate.traces.schema import STACKS


def describe(path: str | Path) -> dict:
    """Summary of a trace as plain JSON-able values (also what ``trace-info --json`` prints)."""
    trace = open_trace(path)
    meta = trace.meta
    frame = trace.scan()
    # A token is counted once, at its first MoE layer.
    per_phase = (
        frame.filter(pl.col("layer") == 0)
        .group_by("stack", "phase")
        .agg(pl.len().alias("tokens"))
        .sort("stack", "phase")
        .collect()
    )
    totals = frame.select(
        pl.len().alias("rows"),
        pl.col("seq").n_unique().alias("sequences"),
        pl.col("dropped").sum().alias("dropped"),
        pl.col("step").max().alias("max_step"),
    ).collect().row(0, named=True)
    size = trace.size_bytes
    rows = totals["rows"]
    return {
        "path": str(trace.path),
        "model": meta.model_id,
        "family": meta.family,
        "dtype": meta.dtype,
        "stacks": {
            name: {"moe_layers": s.moe_layers, "experts": s.experts, "top_k": s.top_k}
            for name, s in sorted(meta.stacks.items(), key=lambda item: STACKS.index(item[0]))
        },
        "ahead_distance": meta.ahead_distance,
        "bytes_per_expert": meta.bytes_per_expert.get(meta.dtype),
        "sequences": totals["sequences"],
        "tokens": {f"{r['stack']}/{r['phase']}": r["tokens"] for r in per_phase.iter_rows(named=True)},
        "decode_steps": totals["max_step"] or 0,
        "rows": rows,
        "dropped_rows": totals["dropped"],
        "parts": len(trace.files),
        "size_bytes": size,
        "bytes_per_row": round(size / rows, 3) if rows else None,
    }


def format_summary(info: dict) -> str:
    lines = [
        f"trace        {info['path']}",
        f"model        {info['model']} ({info['family']}, {info['dtype']}, "
        f"{info['bytes_per_expert'] / 1e6:.2f} MB per expert)" if info["bytes_per_expert"] else f"model        {info['model']}",
    ]
    for name, s in info["stacks"].items():
        lines.append(f"stack        {name}: {s['moe_layers']} MoE layers x {s['experts']} experts, top-{s['top_k']}")
    lines.append(f"ahead        {info['ahead_distance']} later layers predicted per row" if info["ahead_distance"] else "ahead        none (imported or recorded without pre-gating)")
    lines.append(f"sequences    {info['sequences']}")
    for key, count in info["tokens"].items():
        lines.append(f"tokens       {key}: {count}")
    lines.append(f"rows         {info['rows']} ({info['dropped_rows']} dropped by expert capacity)")
    lines.append(f"on disk      {info['size_bytes'] / 1e6:.3f} MB in {info['parts']} part(s), {info['bytes_per_row']} bytes/row")
    return "\n".join(lines)
