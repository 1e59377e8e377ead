"""A provable lower bound on the mean step latency of every policy, in the simulator's model.

Why: the perfect-prediction reference (``oracle`` speculation with Belady
eviction) is a strong policy, not an optimum: online policies sometimes beat
it, so "x oracle" cannot be read as headroom. This bound can never be beaten
by any speculation, caching, buffering or compression policy on the same
trace, hardware, batch size and cache size, so ``ratio_to_lower_bound`` is
headroom: 1.0 would be optimal.

The bound is the larger, per window of passes, of a compute term and a link
term, summed over windows and divided by the decode passes.

**Compute term.** The engine (``engine.py``) keeps two clocks, host ``h`` and
GPU ``g``, and every pass starts with ``g = h``. Per layer step it applies

* dense work: ``s = max(g, h); h += dense_host; g = max(s + dense_gpu, h)``;
* router read and planning: ``h = max(h, g) + router_sync + plan; g = h``,
  where ``plan`` is ``layer_step`` (``resident_layer_step`` with every expert
  resident, which the cost model makes no larger);
* experts: each expert adds at least ``expert_host_resident`` to ``h`` (the
  host issue; no larger than ``expert_host``) and, computed on the GPU, its
  ``expert_gpu[tokens]`` to ``g``, whose kernels cannot start before the
  planning ends; stalls, dequantisation and copy issue only add; so after the
  experts ``h >= h0 + n * expert_host_resident`` and
  ``g >= max(h0 + sum(expert_gpu), h)``, ``h0`` being ``h`` after planning;
* at the end of the pass ``h = max(h, g)``; the latency is ``h`` minus its
  value at the start.

Every update is non-decreasing in ``(h, g)`` and in each cost, so by
induction over the layer steps of a pass, running the same updates with the
smallest cost of each kind and the expert phase replaced by the two
inequalities gives clocks no later than any policy's: ``L_p``, the pass's
compute bound, is at most its latency under any policy. (The all-resident
*simulation* is not such a bound in general: it computes experts in request
order, while a cache run computes hits first, and with unequal token counts
per expert another order can finish sooner.) With ``cpu_compute`` buffering
a missed expert is computed on the host and adds nothing to either clock, so
the expert phase is dropped from ``L_p`` there.

**Link term.** Take a window of consecutive passes, starting at time ``t0``.
At ``t0`` the cache holds at most ``C`` experts (resident or in flight). Each
request in the window is served from the cache or through a bypass staging
buffer; a bypass happens only when every slot of the partition is held by an
expert the same layer step uses, so at most ``n`` more experts are present at
once, ``n`` being the most distinct experts one layer step requests; the
run is therefore a paging schedule of capacity ``C' = C + n`` that starts
with at most ``C`` experts. Loading ahead of need (prefetching) never needs
fewer loads than demand paging, and Belady's MIN is the least number of loads
of demand paging; a schedule that starts with ``S`` experts needs at least
``MIN(C') - |S|`` (give MIN the same ``S`` by loading them first). So at
least ``F = max(0, MIN(C') - C)`` copies are issued after ``t0`` and land
before the window ends (each is used in it), and the window lasts at least
``F * c / E``: ``c`` the least seconds of one copy among the dtypes the
setting copies in, ``E`` the copy engines, each running one copy at a time.
A window that starts the run with an empty cache (every buffering but
``resident``) needs ``MIN(C')`` copies; ``cpu_compute`` copies nothing on a
miss, and ``resident`` nothing at all, so they have no link term.

**Windows.** A window's time is at least the larger of the sum of its passes'
``L_p`` and its link term. The decode passes (the summary's mean is over
them; all passes when there are none) fall into maximal runs of consecutive
passes; each run, and each single pass, is a window; the bound of a run is
the larger of the run as one window and the sum over its single passes.
Summed over the runs and divided by the number of decode passes: the lower
bound on the mean step latency.

The bound ignores order, contention and the need to hold a layer step's
experts at once, so it is loose where those dominate; it is a bound.
"""

from __future__ import annotations

import numpy as np

from pregate.simulator.costs import CostTables
from pregate.simulator.stream import RequestStream


def min_loads(objs: list[int], capacity: int) -> int:
    """Belady's MIN: the fewest loads that serve ``objs`` with ``capacity`` slots, from empty."""
    if not objs:
        return 0
    if capacity <= 0:
        return len(objs)
    import heapq

    n = len(objs)
    nxt = [0] * n
    last: dict[int, int] = {}
    for i in range(n - 1, -1, -1):
        nxt[i] = last.get(objs[i], n + i)
        last[objs[i]] = i
    held: dict[int, int] = {}
    heap: list[tuple[int, int]] = []
    loads = 0
    for i, obj in enumerate(objs):
        if obj in held:
            held[obj] = nxt[i]
            heapq.heappush(heap, (-nxt[i], obj))
            continue
        loads += 1
        if len(held) >= capacity:
            while True:
                neg, cand = heapq.heappop(heap)
                if held.get(cand) == -neg:
                    break
            del held[cand]
        held[obj] = nxt[i]
        heapq.heappush(heap, (-nxt[i], obj))
    return loads


def pass_compute_bounds(stream: RequestStream, costs: CostTables, gpu_experts: bool = True) -> np.ndarray:
    """``L_p`` for every pass: the two-clock updates with the least cost of each kind."""
    dense_gpu, dense_host = costs.dense_gpu, costs.dense_host
    sync = costs.router_sync
    plan = min(costs.resident_layer_step, costs.layer_step)
    eh = min(costs.expert_host_resident, costs.expert_host)
    expert_gpu = np.asarray(costs.expert_gpu)
    starts = stream.ls_req_start
    if gpu_experts and stream.n_requests:
        csum = np.concatenate([[0.0], np.cumsum(expert_gpu[stream.req_tokens.astype(np.int64)])])
        ge = (csum[starts[1:]] - csum[starts[:-1]]).tolist()
        count = np.diff(starts).tolist()
    else:
        ge = [0.0] * stream.n_layer_steps
        count = [0] * stream.n_layer_steps
    bounds = np.zeros(stream.n_passes)
    pass_start = stream.pass_ls_start.tolist()
    for p in range(stream.n_passes):
        h = g = 0.0
        for ls in range(pass_start[p], pass_start[p + 1]):
            s = g if g > h else h
            h += dense_host[ls]
            g = s + dense_gpu[ls]
            if h > g:
                g = h
            if g > h:
                h = g
            h += sync + plan
            g = h
            h0 = h
            if gpu_experts:
                h = h0 + count[ls] * eh
                g = h0 + ge[ls]
                if h > g:
                    g = h
        bounds[p] = g if g > h else h
    return bounds


def decode_runs(stream: RequestStream) -> list[list[int]]:
    """The passes the summary averages over (decode, else all), as maximal runs of consecutive passes."""
    decode = stream.pass_decode.astype(bool)
    chosen = np.flatnonzero(decode) if decode.any() else np.arange(stream.n_passes)
    runs: list[list[int]] = []
    for p in chosen.tolist():
        if runs and runs[-1][-1] == p - 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs


def mean_step_lower_bound(stream: RequestStream, costs: CostTables, *, capacity: int, copy_s: float, engines: int,
                          copies_on_miss: bool = True, starts_empty: bool = True, gpu_experts: bool = True) -> float:
    """The lower bound on the summary's mean step latency (see the module's proof)."""
    compute = pass_compute_bounds(stream, costs, gpu_experts)
    runs = decode_runs(stream)
    n = sum(len(r) for r in runs)
    if not n:
        return 0.0
    slots = capacity + stream.max_needed()
    per_copy = copy_s / max(1, engines)
    starts = stream.ls_req_start
    pass_start = stream.pass_ls_start
    objs = stream.req_obj.tolist()

    def link(first: int, last: int) -> float:
        if not copies_on_miss:
            return 0.0
        lo, hi = int(starts[pass_start[first]]), int(starts[pass_start[last + 1]])
        loads = min_loads(objs[lo:hi], slots)
        cold = starts_empty and first == 0
        return max(0, loads - (0 if cold else capacity)) * per_copy

    total = 0.0
    for run in runs:
        whole = max(float(compute[run].sum()), link(run[0], run[-1]))
        single = sum(max(float(compute[p]), link(p, p)) for p in run)
        total += max(whole, single)
    return total / n
