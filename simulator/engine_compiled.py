"""A compiled timed run for on-demand loading (no speculation) into one lru or fifo cache.

Why: the settings a sweep visits most are on-demand baselines, and for them
the Python engine's time goes to the planner's bookkeeping, not the model.
With no prefetch there are no late hits, no promotions and no cancelled
copies: every copy of a layer step is a demand copy submitted at the router's
read-back and waited for before the step ends. This kernel runs the same
model in numba: the in-use rule and the lru/fifo order of the cache
mechanism, the copy engines as servers processed in SimPy's event order
(time, then event id), and the host/GPU clocks with the same floating-point
operations in the same order, so it returns exactly what the event-lean
engine (and the SimPy reference) returns; the tests compare all three.

Used only when numba is installed and the setting qualifies
(:func:`eligible`); otherwise the event-lean Python engine runs.
"""

from __future__ import annotations

import gc

import numpy as np

from pregate.simulator.cache import ExpertCache
from pregate.simulator.costs import CostTables
from pregate.simulator.engine_compiled_common import dense_block, end_pass, expert_ready, expert_run, ids
from pregate.simulator.outcome import StepRecord, TimedOutcome
from pregate.simulator.planner import Planner
from pregate.simulator.policies.caching import FIFO, LRU
from pregate.simulator.policies.speculation import SpeculationPolicy
from pregate.simulator.stream import RequestStream

try:  # optional: without numba every setting runs on the Python engine
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

INF = np.inf


def eligible(planner: Planner, cache: ExpertCache, timeline: bool, all_resident: bool) -> bool:
    """On-demand loading into one global lru/fifo cache, fresh, kept across sequences, with no timeline."""
    return (numba is not None and not timeline and not all_resident and not planner.wants_prefetch
            and not planner.cpu_misses and not cache.per_layer and not cache.state
            and not planner.reset_per_group
            and cache.counts.misses == 0 and cache.counts.hits == 0
            and type(planner.spec).predict is SpeculationPolicy.predict
            and type(cache.policies[0]) in (LRU, FIFO))


def _advance(t, sq, ev_t, ev_s, woken, cur, queue, qpos, qlen, job_end, job_done, d_copy, seqa, moved, once):
    """Process every engine event before (t, sq) (only the first with ``once``), in SimPy's
    order: time, then event id."""
    n = len(ev_t)
    while True:
        first = -1
        for e in range(n):
            if ev_t[e] < t or (ev_t[e] == t and ev_s[e] < sq):
                if first < 0 or ev_t[e] < ev_t[first] or (ev_t[e] == ev_t[first] and ev_s[e] < ev_s[first]):
                    first = e
        if first < 0:
            return
        e = first
        if woken[e]:
            woken[e] = False
            at = ev_t[e]
        else:
            j = cur[e]
            job_done[j] = True
            moved[0] += 1
            at = job_end[j]
        if qpos[e] < qlen[e]:  # pick the next queued copy
            j = queue[e, qpos[e]]
            qpos[e] += 1
            cur[e] = j
            job_end[j] = at + d_copy
            seqa[0] += 1.0
            ev_t[e] = job_end[j]
            ev_s[e] = seqa[0]
        else:
            cur[e] = -1
            ev_t[e] = INF
            ev_s[e] = INF
        if once:
            return


def _kernel(pass_start, req_start, req_obj, req_tokens, dense_gpu, dense_host, expert_gpu, n_objects, capacity,
            is_lru, n_engines, sync, step_host, copy_issue, expert_host, d_copy, d_deq):
    n_pass = len(pass_start) - 1
    out = np.zeros((n_pass, 9))  # start, latency, compute, stall, dispatch, hits, late hits, misses, prefetches
    counts = np.zeros(6, np.int64)  # hits, misses, bypasses, evictions, peak, copies landed
    # the cache: a doubly linked list in lru/fifo order (head = the first victim candidate)
    prev = np.full(n_objects, -1, np.int64)
    nxt = np.full(n_objects, -1, np.int64)
    cached = np.zeros(n_objects, np.bool_)
    stamp = np.full(n_objects, -1, np.int64)  # the layer step using the object (protected)
    head = -1
    tail = -1
    size = 0
    # copy engines: one pending event each, and the demand copies queued this layer step
    ev_t = np.full(n_engines, INF)
    ev_s = np.full(n_engines, INF)
    woken = np.zeros(n_engines, np.bool_)
    cur = np.full(n_engines, -1, np.int64)
    max_req = 1
    for ls in range(len(req_start) - 1):
        if req_start[ls + 1] - req_start[ls] > max_req:
            max_req = req_start[ls + 1] - req_start[ls]
    queue = np.zeros((n_engines, max_req), np.int64)
    qpos = np.zeros(n_engines, np.int64)
    qlen = np.zeros(n_engines, np.int64)
    job_end = np.zeros(max_req)
    job_done = np.zeros(max_req, np.bool_)
    miss_tok = np.zeros(max_req, np.int64)
    hit_tok = np.zeros(max_req, np.int64)
    seqa = np.zeros(1)
    moved = np.zeros(1, np.int64)
    tot_c = 0.0
    tot_s = 0.0
    tot_d = 0.0
    h = 0.0
    g = 0.0
    now = 0.0
    for p in range(n_pass):
        start = h
        comp = 0.0
        stall = 0.0
        hits = 0
        misses = 0
        for ls in range(pass_start[p], pass_start[p + 1]):
            gd = dense_gpu[ls]
            h, g = dense_block(h, g, gd, dense_host[ls], sync, step_host)
            comp += gd
            if h > now:  # the router's read-back; every copy engine is idle here
                seqa[0] += 1.0
                now = now + (h - now)
            lo = req_start[ls]
            hi = req_start[ls + 1]
            for i in range(lo, hi):
                stamp[req_obj[i]] = ls
            k = 0
            m = 0
            for i in range(lo, hi):
                obj = req_obj[i]
                if cached[obj]:
                    counts[0] += 1
                    hit_tok[k] = req_tokens[i]
                    k += 1
                    if is_lru and obj != tail:  # move to the back of the order
                        a = prev[obj]
                        b = nxt[obj]
                        if a >= 0:
                            nxt[a] = b
                        else:
                            head = b
                        prev[b] = a
                        prev[obj] = tail
                        nxt[obj] = -1
                        nxt[tail] = obj
                        tail = obj
                    continue
                counts[1] += 1
                insert = True
                if size >= capacity:
                    victim = head
                    while victim >= 0 and stamp[victim] == ls:
                        victim = nxt[victim]
                    if victim < 0:  # every occupant in use: a staging buffer, not cached
                        counts[2] += 1
                        insert = False
                    else:
                        a = prev[victim]
                        b = nxt[victim]
                        if a >= 0:
                            nxt[a] = b
                        else:
                            head = b
                        if b >= 0:
                            prev[b] = a
                        else:
                            tail = a
                        prev[victim] = -1
                        nxt[victim] = -1
                        cached[victim] = False
                        size -= 1
                        counts[3] += 1
                if insert:
                    cached[obj] = True
                    size += 1
                    prev[obj] = tail
                    nxt[obj] = -1
                    if tail >= 0:
                        nxt[tail] = obj
                    else:
                        head = obj
                    tail = obj
                    if size > counts[4]:
                        counts[4] = size
                miss_tok[m] = req_tokens[i]
                m += 1
            # the demand copies: the least loaded engine (the first of the least) takes each
            for e in range(n_engines):
                qpos[e] = 0
                qlen[e] = 0
            for j in range(m):
                best = 0
                best_load = 1 << 60
                for e in range(n_engines):
                    load = qlen[e] - qpos[e] + (0 if (cur[e] < 0 and not woken[e]) else 1)
                    if load < best_load:
                        best_load = load
                        best = e
                queue[best, qlen[best]] = j
                qlen[best] += 1
                job_done[j] = False
                job_end[j] = INF
                if cur[best] < 0 and not woken[best]:
                    woken[best] = True
                    seqa[0] += 1.0
                    ev_t[best] = now
                    ev_s[best] = seqa[0]
            hits += k
            misses += m
            h += copy_issue * m
            # experts: hits first, then those waiting for a copy
            for j in range(k):
                ge = expert_gpu[hit_tok[j]]
                comp += ge
                h, ready_at = expert_ready(h, g, expert_host)
                g = expert_run(h, ready_at, ge)
            for j in range(m):
                h, ready_at = expert_ready(h, g, expert_host)
                if not job_done[j]:
                    if ready_at > now:
                        seqa[0] += 1.0
                        t = now + (ready_at - now)
                        _advance(t, seqa[0], ev_t, ev_s, woken, cur, queue, qpos, qlen, job_end, job_done, d_copy,
                                 seqa, moved, False)
                        now = t
                    if not job_done[j]:
                        while not job_done[j]:  # the next event, whenever it is
                            _advance(INF, INF, ev_t, ev_s, woken, cur, queue, qpos, qlen, job_end, job_done,
                                     d_copy, seqa, moved, True)
                        _advance(job_end[j], INF, ev_t, ev_s, woken, cur, queue, qpos, qlen, job_end, job_done,
                                 d_copy, seqa, moved, False)
                        now = job_end[j]
                if now > ready_at:
                    stall += now - ready_at
                    ready_at = now
                ge = expert_gpu[miss_tok[j]] + d_deq
                comp += ge
                g = expert_run(h, ready_at, ge)
        h, g, dispatch = end_pass(out, p, h, g, start, comp, stall, hits, 0, misses, 0)
        tot_c += comp
        tot_s += stall
        tot_d += dispatch
    counts[5] = moved[0]
    final = np.empty(size, np.int64)  # what the cache holds at the end, first victim first
    obj = head
    for i in range(size):
        final[i] = obj
        obj = nxt[obj]
    return out, counts, h, tot_c, tot_s, tot_d, final


if numba is not None:
    _advance = numba.njit(cache=True)(_advance)
    _kernel = numba.njit(cache=True)(_kernel)


def run_compiled(stream: RequestStream, costs: CostTables, planner: Planner, cache: ExpertCache, *,
                 demand_dtype: str, copy_engines: int) -> TimedOutcome:
    """The timed run of an :func:`eligible` setting; the cache ends as the planner would leave it."""
    policy = cache.policies[0]
    out, counts, total, tot_c, tot_s, tot_d, final = _kernel(
        np.asarray(stream.pass_ls_start, np.int64), np.asarray(stream.ls_req_start),
        ids(stream.req_obj), np.asarray(stream.req_tokens, np.int32),
        np.asarray(costs.dense_gpu, np.float64), np.asarray(costs.dense_host, np.float64),
        np.asarray(costs.expert_gpu, np.float64), stream.layout.n_objects, cache.capacity,
        type(policy) is LRU, max(1, copy_engines), costs.router_sync, costs.layer_step, costs.copy_issue,
        costs.expert_host, costs.copy[demand_dtype], costs.dequant[demand_dtype])
    cache.adopt(final.tolist(), dict(zip(("hits", "misses", "bypasses", "evictions", "peak_slots"), counts[:5])))
    steps = step_records(stream, out)
    return TimedOutcome(total_s=float(total), steps=steps, late_hits=0,
                        bytes_moved=int(counts[5]) * costs.expert_bytes[demand_dtype], cancelled_copies=0,
                        compute_s=float(tot_c), stall_s=float(tot_s), dispatch_s=float(tot_d), events=[],
                        engine="compiled (on-demand)")


def step_records(stream: RequestStream, out: np.ndarray, block: int = 1 << 13) -> list[StepRecord]:
    """One record per forward pass from a kernel's rows (start, latency, compute, stall, dispatch,
    hits, late hits, misses, prefetches).

    Made a block of passes at a time: the columns as Python lists cost about as much again as the
    records themselves, so only one block's columns exist at once. The cyclic garbage collector is
    paused meanwhile: the records hold no cycles, and its full collections walk every record made
    so far, which made the cost per record grow with the run (hundreds of thousands of passes)."""
    decode = stream.pass_decode
    starts = stream.pass_ls_start
    records: list[StepRecord] = []
    paused = gc.isenabled()
    gc.disable()
    try:
        for lo in range(0, len(out), block):
            hi = min(lo + block, len(out))
            dec = decode[lo:hi]
            # a decode pass counts its sequences, a prefill pass the tokens of its first layer step
            tokens = np.where(dec, stream.pass_seqs[lo:hi], stream.ls_tokens[starts[lo:hi]]).tolist()
            seconds = out[lo:hi, :5].T.tolist()  # start, latency, compute, stall, dispatch
            counts = out[lo:hi, 5:].astype(np.int64).T.tolist()  # hits, late hits, misses, prefetches
            # column by column through map: half the cost of indexing rows in a comprehension
            records.extend(map(StepRecord, range(lo, hi), stream.pass_group[lo:hi].tolist(),
                               stream.pass_step[lo:hi].tolist(), dec.tolist(), tokens, *seconds, *counts))
        return records
    finally:
        if paused:
            gc.enable()


def warm_up() -> float:
    """Compile (or load from numba's cache) the kernel on a tiny input; returns the seconds it
    took. A process pays this once, before its first compiled run."""
    import time

    if numba is None:
        return 0.0
    start = time.perf_counter()
    one, one32 = np.array([0, 1], np.int64), np.array([0, 1], np.int32)  # the stream's offset types
    # object ids as int16: the stream's type for every model with up to 32767 experts in all
    _kernel(one, one32, np.zeros(1, np.int16), np.ones(1, np.int32), np.zeros(1), np.zeros(1), np.zeros(2), 1, 1,
            True, 1, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    return time.perf_counter() - start
