"""Reuse distances and LRU hit-rate curves of the expert request stream.

The stream is the one the simulator replays (:mod:`pregate.simulator.stream`):
the distinct experts each MoE layer step needs, in the order the hardware
sees them, for a given batch size. For each request:

* **reuse time**: requests since the same expert was last requested;
* **stack distance**: distinct other experts requested since then (Mattson et
  al., 1970). A fully associative LRU cache of C experts, without prefetching,
  hits exactly the requests whose stack distance is below C, so one pass gives
  the LRU hit rate at every cache size. First requests are cold misses.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from pregate.traces import Trace

COLD = -1  # stack distance of a first request


def stack_distances(objects: np.ndarray, n_objects: int) -> np.ndarray:
    """Stack distance of every request (``COLD`` for first requests).

    O(requests x objects) with a vectorised count per request: fine for the
    expert universes of MoE models (up to a few thousand experts).
    """
    last = np.full(n_objects, -1, dtype=np.int64)
    out = np.empty(len(objects), dtype=np.int64)
    objs = objects.tolist()
    for i, o in enumerate(objs):
        t = last[o]
        out[i] = COLD if t < 0 else int(np.count_nonzero(last > t))
        last[o] = i
    return out


def request_frame(trace: Trace, batch_size: int = 1, limit: int | None = 2_000_000) -> pl.DataFrame:
    """One row per request: index, global MoE layer, expert object, reuse time and stack distance."""
    from pregate.simulator.stream import build_stream

    stream = build_stream(trace, batch_size=batch_size)
    objs = stream.req_obj[:limit] if limit else stream.req_obj
    n = len(objs)
    layer_of = np.repeat(np.arange(stream.layout.n_layers), stream.layout.experts)
    prev = np.full(n, -1, dtype=np.int64)
    last: dict[int, int] = {}
    for i, o in enumerate(objs.tolist()):
        prev[i] = last.get(o, -1)
        last[o] = i
    idx = np.arange(n)
    return pl.DataFrame({
        "request": idx,
        "layer": layer_of[objs],
        "object": objs,
        "reuse_time": np.where(prev >= 0, idx - prev, -1),
        "stack_distance": stack_distances(objs, stream.layout.n_objects),
    }).with_columns(pl.lit(stream.layout.n_objects).alias("n_objects"))


def reuse_summary(requests: pl.DataFrame) -> pl.DataFrame:
    """Per global MoE layer: requests, cold share, median and p90 reuse time and stack distance."""
    warm = pl.col("stack_distance") >= 0
    return (
        requests.group_by("layer")
        .agg(
            pl.len().alias("requests"),
            (~warm).mean().alias("cold_share"),
            pl.col("reuse_time").filter(warm).median().alias("median_reuse_time"),
            pl.col("reuse_time").filter(warm).quantile(0.9).alias("p90_reuse_time"),
            pl.col("stack_distance").filter(warm).median().alias("median_stack_distance"),
            pl.col("stack_distance").filter(warm).quantile(0.9).alias("p90_stack_distance"),
        )
        .sort("layer")
    )


def lru_curve(requests: pl.DataFrame, sizes: list[int] | None = None) -> pl.DataFrame:
    """LRU hit rate (global cache, no prefetch) at each cache size in experts (default: 1..all)."""
    n_objects = int(requests["n_objects"][0]) if requests.height else 0
    sizes = sizes or list(range(1, n_objects + 1))
    d = requests["stack_distance"].to_numpy()
    warm = np.sort(d[d >= 0])
    total = max(1, len(d))
    hits = np.searchsorted(warm, np.asarray(sizes), side="left")  # distance < C
    return pl.DataFrame({
        "cache_experts": sizes,
        "cache_share": [s / n_objects if n_objects else 0.0 for s in sizes],
        "hit_rate": hits / total,
    })


def lru_hit_rate_per_layer(requests: pl.DataFrame, sizes: list[int]) -> pl.DataFrame:
    """Per global MoE layer and cache size: the LRU hit rate of that layer's requests (one global cache)."""
    rows = []
    for size in sizes:
        rows.append(
            requests.group_by("layer")
            .agg(((pl.col("stack_distance") >= 0) & (pl.col("stack_distance") < size)).mean().alias("hit_rate"))
            .with_columns(pl.lit(size).alias("cache_experts"))
        )
    return pl.concat(rows).select("cache_experts", "layer", "hit_rate").sort("cache_experts", "layer")
