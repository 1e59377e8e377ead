"""The per-pass arithmetic both compiled kernels share: one copy, so they cannot drift apart.

Why a module of its own: the on-demand kernel (:mod:`engine_compiled`) and the
pre-gated prefetch kernel (:mod:`engine_compiled_prefetch`) model the same
host and GPU clocks around different cache and copy decisions. The clock
updates must be the very floating-point operations, in the very order, of
the event-lean Python engine (:mod:`pregate.simulator.engine`, which keeps
its own copy as the readable reference), or the kernels' results would no
longer be bit-identical to it. Each helper is a small ``@njit`` function that
returns the updated clocks; the compiler inlines calls this small, so sharing them costs
nothing in the hot loop.

Clocks: ``h`` is the host's (what it has issued), ``g`` the GPU's (when its
queued work ends).
"""

from __future__ import annotations

import numpy as np

try:  # optional: without numba the kernels are not used (see their ``eligible``)
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None


def ids(values) -> np.ndarray:
    """Object ids or layers as the kernels take them: the stream's int16 or int32 array as it is (no
    copy of a trace-long array), anything else as int32. The kernels are compiled for each."""
    array = np.asarray(values)
    return array if array.dtype in (np.int16, np.int32) else array.astype(np.int32)


def dense_block(h, g, gd, dh, sync, step_host):
    """A layer step's dense blocks and router: issued over ``dh`` host seconds, run for ``gd`` GPU
    seconds, then the router's read-back (the host waits for the GPU) and the planner's time.
    Returns the clocks (h, g); they are equal afterwards."""
    g_start = g if g > h else h
    h += dh
    g = g_start + gd
    if h > g:
        g = h
    if g > h:
        h = g
    h += sync
    h += step_host
    g = h
    return h, g


def expert_ready(h, g, expert_host):
    """Issue one expert's kernels (``expert_host`` host seconds). Returns the host clock and the time
    its GPU work may start (after the GPU's queue and its own issue)."""
    h += expert_host
    return h, (g if g > h - expert_host else h - expert_host)


def expert_run(h, ready_at, ge):
    """The GPU clock after one expert of ``ge`` GPU seconds that starts at ``ready_at``; the GPU
    never runs ahead of the host's issue."""
    g = ready_at + ge
    if h > g:
        g = h
    return g


def end_pass(out, p, h, g, start, comp, stall, hits, late, misses, prefetched):
    """Close forward pass ``p``: the host waits for the GPU, and row ``p`` of ``out`` gets start,
    latency, compute, stall, dispatch (what neither explains, floored at 0), hits that were not
    late, late hits, misses and prefetches. Returns (h, g, dispatch)."""
    if g > h:
        h = g
    g = h
    latency = h - start
    dispatch = latency - comp - stall
    if dispatch < 0.0:
        dispatch = 0.0
    out[p, 0] = start
    out[p, 1] = latency
    out[p, 2] = comp
    out[p, 3] = stall
    out[p, 4] = dispatch
    out[p, 5] = hits - late
    out[p, 6] = late
    out[p, 7] = misses
    out[p, 8] = prefetched
    return h, g, dispatch


if numba is not None:
    dense_block = numba.njit(cache=True)(dense_block)
    expert_ready = numba.njit(cache=True)(expert_ready)
    expert_run = numba.njit(cache=True)(expert_run)
    end_pass = numba.njit(cache=True)(end_pass)
