"""A compiled timed run for pre-gated prefetch (``layer_minus_1``) into one lru or fifo cache.

Why: speculation is what a sweep over a pre-gated trace is about, and in the
event-lean Python engine such a run spends most of its time in the planner,
the cache and the cost gate, not in the model of the hardware. This kernel is
a second, compiled copy of exactly those decisions and of the engine, fused
into one loop over the layer steps:

* the planner's rules: demand hits and misses (bypass when every slot is
  protected), the in-use and speculation protection, the lru/fifo order, the
  cache's counts (prefetch hits, wasted prefetches, evictions, peak);
* the cost gate of :mod:`pregate.simulator.gate` with its shadow cache, its
  model clock, its statistics and its duel against the shadow (the two
  stall-aware clocks, the held prefetches and the periodic probe), with the
  same floating-point operations in the same order (only the distances the
  gate can ever read are kept; its constants come from the gate object);
* the engine of :mod:`pregate.simulator.engine`: copy engines with a demand
  and a prefetch queue (linked lists, so a late hit's promotion is O(1)),
  cancelled copies left in their queue and skipped, SimPy's event order
  (time, then event id), late hits and dequantisation on landing.

A copy's record lives in a small pool of slots, reused once the copy has
landed or its cancelled entry has left the queue, so memory follows the copies
in flight, not the trace. Results are identical to the Python and SimPy
engines; the tests compare all three field by field. Used only when numba is
installed and the setting qualifies (:func:`eligible`); otherwise the
event-lean Python engine runs.
"""

from __future__ import annotations


import numpy as np

from pregate.simulator.cache import CacheCounts, ExpertCache
from pregate.simulator.costs import CostTables
from pregate.simulator.engine_compiled import step_records
from pregate.simulator.engine_compiled_common import dense_block, end_pass, expert_ready, expert_run, ids
from pregate.simulator.gate import CostGate
from pregate.simulator.outcome import TimedOutcome
from pregate.simulator.planner import Planner
from pregate.simulator.policies.caching import FIFO, LRU
from pregate.simulator.policies.speculation import LayerMinusOne
from pregate.simulator.stream import RequestStream

try:  # optional: without numba every setting runs on the Python engine
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

INF = np.inf
BIG = 1 << 62  # "no event id": later than any
RANKS = CostGate.RANKS
QUEUED, RUNNING, DONE, CANCELLED = 0, 1, 2, 3
# a copy's integer and float fields (columns of the pool)
J_OBJ, J_BYTES, J_DEMAND, J_STATE, J_NEXT, J_PREV, J_SRV = 0, 1, 2, 3, 4, 5, 6
J_SEC, J_DEQ, J_START, J_END = 0, 1, 2, 3
# a copy engine's fields: demand queue (head, tail, length), prefetch queue, running copy, woken, event id, bytes
S_DQH, S_PQH, S_CUR, S_WOKEN, S_EVS, S_MOVED = 0, 3, 6, 7, 8, 9
# shared counters: event id, free slots, cancelled copies
C_SEQ, C_NFREE, C_CANCELLED = 0, 1, 2
# cache counts, in CacheCounts' order
K_HITS, K_MISSES, K_BYPASSES, K_PREFETCHES, K_PF_HITS, K_WASTED, K_EVICTIONS, K_PEAK = range(8)


# Gated runs take the kernel: its gated path follows the cost gate step for step (the stall-aware
# saving, the issue cost, and the duel against the no-prefetch shadow). False sends them to the
# Python engine, should the gate change before the kernel follows it.
COMPILED_GATE = True


def eligible(planner: Planner, cache: ExpertCache, timeline: bool, all_resident: bool) -> bool:
    """layer_minus_1 into one global lru/fifo cache, fresh, kept across sequences, with no timeline;
    gated (a fresh gate) or not."""
    gate, shadow = planner.gate, planner.shadow
    return (numba is not None and not timeline and not all_resident and type(planner) is Planner
            and type(planner.spec) is LayerMinusOne and planner.wants_prefetch and planner.protect_named
            and not planner.cpu_misses and not cache.per_layer and not cache.state
            and not planner.reset_per_group and not planner.future_for_cache
            and cache.counts == CacheCounts() and type(cache.policies[0]) in (LRU, FIFO)
            and (gate is None or (COMPILED_GATE and type(gate) is CostGate and gate.steps == 0
                                  and not gate.pending and not gate.issued_to and shadow is not None
                                  and not shadow.state and shadow.counts == CacheCounts())))


# ---- the order of a cache: a doubly linked list, hts = [head, tail, size] -------------------------
def _ll_append(prev, nxt, hts, obj):
    t = hts[1]
    prev[obj] = t
    nxt[obj] = -1
    if t >= 0:
        nxt[t] = obj
    else:
        hts[0] = obj
    hts[1] = obj
    hts[2] += 1


def _ll_remove(prev, nxt, hts, obj):
    a = prev[obj]
    b = nxt[obj]
    if a >= 0:
        nxt[a] = b
    else:
        hts[0] = b
    if b >= 0:
        prev[b] = a
    else:
        hts[1] = a
    prev[obj] = -1
    nxt[obj] = -1
    hts[2] -= 1


# ---- copy engines -------------------------------------------------------------------------------
def _q_push(srv, ji, s, j, col):
    """Append copy ``j`` to engine ``s``'s queue at ``col`` (S_DQH or S_PQH)."""
    t = srv[s, col + 1]
    ji[j, J_NEXT] = -1
    ji[j, J_PREV] = t
    if t >= 0:
        ji[t, J_NEXT] = j
    else:
        srv[s, col] = j
    srv[s, col + 1] = j
    srv[s, col + 2] += 1
    ji[j, J_SRV] = s


def _q_unlink(srv, ji, s, j, col):
    a = ji[j, J_PREV]
    b = ji[j, J_NEXT]
    if a >= 0:
        ji[a, J_NEXT] = b
    else:
        srv[s, col] = b
    if b >= 0:
        ji[b, J_PREV] = a
    else:
        srv[s, col + 1] = a
    srv[s, col + 2] -= 1


def _pick(s, t, srv, ev_t, ji, jf, free, cnt):
    """Engine ``s`` takes its next copy at ``t`` (demand first; cancelled copies leave the queue)."""
    while True:
        if srv[s, S_DQH + 2] > 0:
            j = srv[s, S_DQH]
            _q_unlink(srv, ji, s, j, S_DQH)
        elif srv[s, S_PQH + 2] > 0:
            j = srv[s, S_PQH]
            _q_unlink(srv, ji, s, j, S_PQH)
        else:
            srv[s, S_CUR] = -1
            ev_t[s] = INF
            srv[s, S_EVS] = BIG
            return
        if ji[j, J_STATE] == QUEUED:
            break
        free[cnt[C_NFREE]] = j  # a cancelled copy: nothing refers to its slot any more
        cnt[C_NFREE] += 1
    ji[j, J_STATE] = RUNNING
    jf[j, J_START] = t
    end = t + jf[j, J_SEC]
    jf[j, J_END] = end
    srv[s, S_CUR] = j
    cnt[C_SEQ] += 1
    ev_t[s] = end
    srv[s, S_EVS] = cnt[C_SEQ]


def _process(s, srv, ev_t, ji, jf, free, cnt, jobmap, inflight, needs):
    """Engine ``s``'s pending event: a pick-up after a wake, or a landing and the next pick-up."""
    if srv[s, S_WOKEN]:
        srv[s, S_WOKEN] = 0
        _pick(s, ev_t[s], srv, ev_t, ji, jf, free, cnt)
        return
    j = srv[s, S_CUR]
    ji[j, J_STATE] = DONE
    srv[s, S_MOVED] += ji[j, J_BYTES]
    obj = ji[j, J_OBJ]
    if obj >= 0 and jobmap[obj] == j:  # the copy landed in the cache
        jobmap[obj] = -1
        inflight[obj] = False
        if jf[j, J_DEQ] != 0.0:
            needs[obj] = jf[j, J_DEQ]
    # the slot is free for the next layer step's copies; this step's waits still read its end
    free[cnt[C_NFREE]] = j
    cnt[C_NFREE] += 1
    _pick(s, jf[j, J_END], srv, ev_t, ji, jf, free, cnt)


def _advance(t, sq, srv, ev_t, ji, jf, free, cnt, jobmap, inflight, needs):
    """Process every engine event before (t, sq) in SimPy's order: time, then event id."""
    n = len(ev_t)
    while True:
        first = -1
        for e in range(n):
            if ev_t[e] < t or (ev_t[e] == t and srv[e, S_EVS] < sq):
                if first < 0 or ev_t[e] < ev_t[first] or (ev_t[e] == ev_t[first] and srv[e, S_EVS] < srv[first, S_EVS]):
                    first = e
        if first < 0:
            return
        _process(first, srv, ev_t, ji, jf, free, cnt, jobmap, inflight, needs)


def _wait_done(j, srv, ev_t, ji, jf, free, cnt, jobmap, inflight, needs):
    """Run the engines until copy ``j`` lands, then past its landing time; returns its end."""
    n = len(ev_t)
    while ji[j, J_STATE] != DONE:
        first = 0
        for e in range(1, n):
            if ev_t[e] < ev_t[first] or (ev_t[e] == ev_t[first] and srv[e, S_EVS] < srv[first, S_EVS]):
                first = e
        _process(first, srv, ev_t, ji, jf, free, cnt, jobmap, inflight, needs)
    end = jf[j, J_END]
    _advance(end, BIG, srv, ev_t, ji, jf, free, cnt, jobmap, inflight, needs)
    return end


def _submit_copy(j, now, srv, ev_t, ji, cnt):
    """The least loaded engine (the first of the least) queues copy ``j``; an idle one wakes."""
    n = len(ev_t)
    best = 0
    if n > 1:
        best_load = BIG
        for e in range(n):
            busy = 0 if (srv[e, S_CUR] < 0 and not srv[e, S_WOKEN]) else 1
            load = srv[e, S_DQH + 2] + srv[e, S_PQH + 2] + busy
            if load < best_load:
                best_load = load
                best = e
    _q_push(srv, ji, best, j, S_DQH if ji[j, J_DEMAND] else S_PQH)
    if srv[best, S_CUR] < 0 and not srv[best, S_WOKEN]:
        srv[best, S_WOKEN] = 1
        cnt[C_SEQ] += 1
        ev_t[best] = now
        srv[best, S_EVS] = cnt[C_SEQ]


def _grow(ji, jf, free, cnt):
    """Double the pool of copy slots."""
    n = ji.shape[0]
    ji2 = np.empty((2 * n, ji.shape[1]), np.int64)
    jf2 = np.empty((2 * n, jf.shape[1]))
    ji2[:n] = ji
    jf2[:n] = jf
    free2 = np.empty(2 * n, np.int64)
    free2[: cnt[C_NFREE]] = free[: cnt[C_NFREE]]
    for k in range(n, 2 * n):
        free2[cnt[C_NFREE]] = k
        cnt[C_NFREE] += 1
    return ji2, jf2, free2


def _evict(v, prev, nxt, hts, incache, inflight, unused, needs, jobmap, ji, kc, cnt):
    """The cache evicts ``v``: its queued copy is cancelled, an unused prefetch counts as wasted."""
    incache[v] = False
    inflight[v] = False
    _ll_remove(prev, nxt, hts, v)
    kc[K_EVICTIONS] += 1
    j = jobmap[v]
    if j >= 0:
        jobmap[v] = -1
        if ji[j, J_STATE] == QUEUED:
            ji[j, J_STATE] = CANCELLED
            cnt[C_CANCELLED] += 1
    needs[v] = 0.0
    if unused[v]:
        unused[v] = False
        kc[K_WASTED] += 1


def _insert(obj, prefetch, prev, nxt, hts, incache, inflight, unused, kc):
    incache[obj] = True
    inflight[obj] = True
    _ll_append(prev, nxt, hts, obj)
    if prefetch:
        unused[obj] = True
        kc[K_PREFETCHES] += 1
    if hts[2] > kc[K_PEAK]:
        kc[K_PEAK] = hts[2]


def _make_room(ls, capacity, prot, prev, nxt, hts, incache, inflight, unused, needs, jobmap, ji, kc, cnt):
    """A free slot (True), after evicting the first unprotected expert if full; False if none is."""
    if hts[2] < capacity:
        return True
    v = hts[0]
    while v >= 0 and prot[v] == ls:
        v = nxt[v]
    if v < 0:
        return False
    _evict(v, prev, nxt, hts, incache, inflight, unused, needs, jobmap, ji, kc, cnt)
    return True


def _new_copy(obj, nbytes, demand, seconds, deq, now, srv, ev_t, ji, jf, free, cnt, jobmap):
    """Take a pool slot for a copy of ``obj`` (-1: a bypass, landing in no slot of the cache) and
    submit it to the least loaded engine at ``now``. Demand and prefetch copies differ only in
    the fields given. Returns (its slot, and the pool's arrays, grown if it was full)."""
    if cnt[C_NFREE] == 0:
        ji, jf, free = _grow(ji, jf, free, cnt)
    cnt[C_NFREE] -= 1
    j = free[cnt[C_NFREE]]
    ji[j, J_OBJ] = obj
    ji[j, J_BYTES] = nbytes
    ji[j, J_DEMAND] = demand
    ji[j, J_STATE] = QUEUED
    jf[j, J_SEC] = seconds
    jf[j, J_DEQ] = deq
    jf[j, J_START] = INF
    jf[j, J_END] = INF
    if obj >= 0:
        jobmap[obj] = j
    _submit_copy(j, now, srv, ev_t, ji, cnt)
    return j, ji, jf, free


def _kernel(pass_start, req_start, req_obj, req_tokens, ls_layer, a_start, a_obj, obj_layer,
            dense_gpu, dense_host, expert_gpu, n_objects, capacity, is_lru, n_engines, sync, step_host,
            copy_issue, expert_host, d_copy, p_copy, d_bytes, p_bytes, d_deq, deq_d, deq_p, max_prefetch,
            gated, step_s, g_pcopy, g_dcopy, g_engines, depth, g_issue, g_lag, g_slack, g_probe):
    n_pass = len(pass_start) - 1
    n_ls = len(ls_layer)
    out = np.zeros((n_pass, 9))  # start, latency, compute, stall, dispatch, hits, late, misses, prefetches
    kc = np.zeros(8, np.int64)  # the cache's counts
    cnt = np.zeros(3, np.int64)
    # the cache
    prev = np.full(n_objects, -1, np.int64)
    nxt = np.full(n_objects, -1, np.int64)
    hts = np.array([-1, -1, 0], np.int64)
    incache = np.zeros(n_objects, np.bool_)
    inflight = np.zeros(n_objects, np.bool_)
    unused = np.zeros(n_objects, np.bool_)
    needs = np.zeros(n_objects)  # seconds of dequantisation owed by a landed copy
    jobmap = np.full(n_objects, -1, np.int64)  # obj -> its latest copy into the cache
    prot = np.full(n_objects, -1, np.int64)  # == ls: protected in layer step ls
    need = np.full(n_objects, -1, np.int64)  # == ls: needed by layer step ls
    hitst = np.full(n_objects, -1, np.int64)  # == ls: a hit of layer step ls
    seen = np.full(n_objects, -1, np.int64)  # == ls: already named by layer step ls's prediction
    # the gate's shadow cache (the same policy and size, demand requests only)
    sprev = np.full(n_objects, -1, np.int64)
    snxt = np.full(n_objects, -1, np.int64)
    shts = np.array([-1, -1, 0], np.int64)
    sin = np.zeros(n_objects, np.bool_)
    s_misses = 0
    caused = 0
    n_prefetched = 0
    # the gate's statistics (distances 1..depth) and model clock
    D = depth
    tried = np.zeros((D + 1, RANKS), np.int64)
    right = np.zeros((D + 1, RANKS), np.int64)
    l_tried = np.zeros(D + 1, np.int64)
    l_right = np.zeros(D + 1, np.int64)
    max_req = 1
    for ls in range(n_ls):
        if req_start[ls + 1] - req_start[ls] > max_req:
            max_req = req_start[ls + 1] - req_start[ls]
    max_w = 1
    for ls in range(n_ls):
        if a_start[ls + 1] - a_start[ls] > max_w:
            max_w = a_start[ls + 1] - a_start[ls]
    ring = D + 1  # predictions and prefetches aimed at a target, by target layer step mod ring
    pend_n = np.zeros(ring, np.int64)
    pend = np.zeros((ring, D * max_w + 1, 3), np.int64)  # obj, j, rank
    iss_n = np.zeros(ring, np.int64)
    iss = np.zeros((ring, D * max_w + 1, 2), np.int64)  # obj, j
    iss_at = np.zeros((ring, D * max_w + 1))  # its arrival on the duel's clock
    rank_st = np.full(len(obj_layer) + 2, -1, np.int64)
    rank_n = np.zeros(len(obj_layer) + 2, np.int64)
    g_now = 0.0
    g_link = 0.0
    g_next = 0.0
    g_idle = 0.0
    g_steps = 0
    g_missed = 0
    g_issued = 0
    g_refused = 0
    g_held = 0
    g_late = 0.0  # the latest duel-clock arrival of a prefetch hit at this layer step
    n_needed = 1  # distinct experts of this layer step
    probe_step = -1
    # the duel: this run's and the shadow's stall-aware model clocks (now, link, next)
    d_now = 0.0
    d_link = 0.0
    d_next = 0.0
    s_now = 0.0
    s_link = 0.0
    s_next = 0.0
    # the plan of one layer step
    h_obj = np.zeros(max_req, np.int64)
    h_tok = np.zeros(max_req, np.int64)
    m_obj = np.zeros(max_req, np.int64)
    m_tok = np.zeros(max_req, np.int64)
    m_cached = np.zeros(max_req, np.bool_)
    p_obj = np.zeros(max_w + 1, np.int64)
    r_obj = np.zeros(max_req, np.int64)
    r_tok = np.zeros(max_req, np.int64)
    w_job = np.zeros(2 * max_req, np.int64)
    w_obj = np.zeros(2 * max_req, np.int64)
    w_tok = np.zeros(2 * max_req, np.int64)
    w_extra = np.zeros(2 * max_req)
    # copy engines and the pool of copies
    srv = np.full((n_engines, 10), -1, np.int64)
    for e in range(n_engines):
        srv[e, S_DQH + 2] = 0
        srv[e, S_PQH + 2] = 0
        srv[e, S_WOKEN] = 0
        srv[e, S_EVS] = BIG
        srv[e, S_MOVED] = 0
    ev_t = np.full(n_engines, INF)
    pool = capacity + 2 * max_req + 2 * max_w + 2 * n_engines + 64
    ji = np.zeros((pool, 7), np.int64)
    jf = np.zeros((pool, 4))
    free = np.empty(pool, np.int64)
    for k in range(pool):
        free[k] = pool - 1 - k
    cnt[C_NFREE] = pool
    tot_c = 0.0
    tot_s = 0.0
    tot_d = 0.0
    tot_late = 0
    h = 0.0
    g = 0.0
    now = 0.0
    for p in range(n_pass):
        start = h
        comp = 0.0
        stall = 0.0
        hits = 0
        late = 0
        misses = 0
        prefetched = 0
        for ls in range(pass_start[p], pass_start[p + 1]):
            gd = dense_gpu[ls]
            h, g = dense_block(h, g, gd, dense_host[ls], sync, step_host)
            comp += gd
            if h > now:  # the router's read-back
                cnt[C_SEQ] += 1
                t = now + (h - now)
                _advance(t, cnt[C_SEQ], srv, ev_t, ji, jf, free, cnt, jobmap, inflight, needs)
                now = t
            # ---- the planner: demand requests ----
            lo = req_start[ls]
            hi = req_start[ls + 1]
            layer = ls_layer[ls]
            n_needed = 0
            for i in range(lo, hi):
                if need[req_obj[i]] != ls:
                    n_needed += 1
                need[req_obj[i]] = ls
                prot[req_obj[i]] = ls
            nh = 0
            nm = 0
            npf = 0
            for i in range(lo, hi):
                obj = req_obj[i]
                if incache[obj]:
                    kc[K_HITS] += 1
                    if unused[obj]:
                        unused[obj] = False
                        kc[K_PF_HITS] += 1
                    if is_lru and obj != hts[1]:
                        _ll_remove(prev, nxt, hts, obj)
                        _ll_append(prev, nxt, hts, obj)
                    h_obj[nh] = obj
                    h_tok[nh] = req_tokens[i]
                    hitst[obj] = ls
                    nh += 1
                else:
                    kc[K_MISSES] += 1
                    ok = _make_room(ls, capacity, prot, prev, nxt, hts, incache, inflight, unused, needs, jobmap,
                                    ji, kc, cnt)
                    if ok:
                        _insert(obj, False, prev, nxt, hts, incache, inflight, unused, kc)
                    else:
                        kc[K_BYPASSES] += 1
                    m_obj[nm] = obj
                    m_tok[nm] = req_tokens[i]
                    m_cached[nm] = ok
                    nm += 1
            if gated:
                # the shadow cache sees the demand requests alone
                s_before = s_misses
                for i in range(lo, hi):
                    obj = req_obj[i]
                    if sin[obj]:
                        if is_lru and obj != shts[1]:
                            _ll_remove(sprev, snxt, shts, obj)
                            _ll_append(sprev, snxt, shts, obj)
                    else:
                        s_misses += 1
                        ok = True
                        if shts[2] >= capacity:
                            v = shts[0]
                            while v >= 0 and need[v] == ls:
                                v = snxt[v]
                            if v < 0:
                                ok = False
                            else:
                                sin[v] = False
                                _ll_remove(sprev, snxt, shts, v)
                        if ok:
                            sin[obj] = True
                            _ll_append(sprev, snxt, shts, obj)
                caused = kc[K_MISSES] - s_misses + kc[K_PF_HITS]
                n_prefetched = kc[K_PREFETCHES]
                # score the prefetches and the predictions aimed at this layer step
                s_step = s_misses - s_before
                slot = ls % ring
                g_late = 0.0
                for k in range(iss_n[slot]):
                    if hitst[iss[slot, k, 0]] == ls and iss_at[slot, k] > g_late:
                        g_late = iss_at[slot, k]
                for k in range(iss_n[slot]):
                    jj = iss[slot, k, 1]
                    l_tried[jj] += 1
                    if hitst[iss[slot, k, 0]] == ls:
                        l_right[jj] += 1
                iss_n[slot] = 0
                for k in range(pend_n[slot]):
                    jj = pend[slot, k, 1]
                    rr = pend[slot, k, 2]
                    tried[jj, rr] += 1
                    if need[pend[slot, k, 0]] == ls:
                        right[jj, rr] += 1
                pend_n[slot] = 0
                # demand copies go first: they occupy the link from now on
                g_steps += 1
                if nm:
                    g_missed += 1
                    st = g_link if g_link > g_now else g_now
                    g_link = st + nm * g_dcopy / g_engines
                a = g_now + step_s[ls]
                b = g_link if nm else 0.0
                g_next = b if b > a else a
                mx = g_now if g_now > g_link else g_link
                x = g_next - mx
                g_idle = x if x > 0.0 else 0.0
                # the duel's clocks: a step ends no sooner than its copies (or a late prefetch) land
                # plus one expert's share of it, and the host issues each copy
                stp = step_s[ls]
                tail = stp / (n_needed if n_needed > 1 else 1)
                fin = d_now + stp
                if nm:
                    st = d_link if d_link > d_now else d_now
                    d_link = st + nm * g_dcopy / g_engines
                    y = d_link + tail
                    fin = y if y > fin else fin
                if g_late > d_now:
                    y = g_late + tail
                    fin = y if y > fin else fin
                d_next = fin + nm * g_issue
                fin = s_now + stp  # the shadow has no prefetch to wait for
                if s_step:
                    st = s_link if s_link > s_now else s_now
                    s_link = st + s_step * g_dcopy / g_engines
                    y = s_link + tail
                    fin = y if y > fin else fin
                s_next = fin + s_step * g_issue
            # ---- the planner: what layer_minus_1 names for the next layer ----
            remaining = pass_start[p + 1] - 1 - ls
            a0 = a_start[ls]
            a1 = a_start[ls + 1]
            if remaining >= 1 and a1 > a0:
                limit = max_prefetch if max_prefetch else a1 - a0
                if gated:
                    rx = (caused + 0.5) / (n_prefetched + 2.0)
                    rx = rx if rx > 0.0 else 0.0
                    regret = rx if rx < 3.0 else 3.0
                    horizon = 0
                    for jj in range(1, D + 1):
                        tr = 0
                        rt = 0
                        for rr in range(RANKS):
                            tr += tried[jj, rr]
                            rt += right[jj, rr]
                        if (rt + 1.0) / (tr + 2.0) <= regret:
                            break
                        horizon = jj
                    if remaining < horizon:
                        horizon = remaining
                    for k in range(a0, a1):
                        obj = a_obj[k]
                        jj = obj_layer[obj] - layer
                        if seen[obj] == ls or jj < 1 or jj > remaining or ls_layer[ls + jj] != obj_layer[obj]:
                            continue
                        seen[obj] = ls
                        if rank_st[jj] != ls:
                            rank_st[jj] = ls
                            rank_n[jj] = 0
                        rank = rank_n[jj]
                        rank_n[jj] += 1
                        if incache[obj]:
                            prot[obj] = ls
                            continue
                        rr = rank if rank < RANKS - 1 else RANKS - 1
                        if jj <= D:  # scored at its target (farther distances are never read)
                            slot = (ls + jj) % ring
                            q = pend_n[slot]
                            pend[slot, q, 0] = obj
                            pend[slot, q, 1] = jj
                            pend[slot, q, 2] = rr
                            pend_n[slot] = q + 1
                        if jj > horizon or npf >= limit:
                            continue
                        # the duel: behind the shadow, only one probe every PROBE layer steps
                        lag = d_now - s_now - g_lag * s_now - g_slack * g_dcopy
                        if lag > 0.0:
                            if g_steps % g_probe == 0 and probe_step != g_steps:
                                probe_step = g_steps
                            else:
                                g_held += 1
                                g_refused += 1
                                continue
                        # the gate: expected saving against the link's, the issue's and the victim's cost
                        named = (right[jj, rr] + 1.0) / (tried[jj, rr] + 2.0)
                        landed = (l_right[jj] + 3.0) / (l_tried[jj] + 4.0)
                        c = named if named < landed else landed
                        tt = 0.0
                        for q in range(ls, min(ls + jj, n_ls)):
                            tt += step_s[q]
                        t_target = g_now + tt
                        st = g_link if g_link > g_now else g_now
                        arrival = st + g_pcopy
                        # a demand copy stalls the target step only beyond its other experts' work
                        tgt = ls + jj
                        step_t = step_s[tgt] if tgt < len(step_s) else step_s[ls]
                        tail = step_t / (n_needed if n_needed > 1 else 1)
                        t_end = t_target + step_t
                        lt = g_link if g_link > t_target else t_target
                        x = lt + g_dcopy + tail - t_end
                        d_stall = x if x > 0.0 else 0.0
                        x = arrival + tail - t_end
                        saving = (d_stall if d_stall < g_dcopy else g_dcopy) - (x if x > 0.0 else 0.0)
                        worth = False
                        if saving > 0.0:
                            occ = g_pcopy / g_engines
                            y = occ - g_idle
                            link_cost = ((g_missed + 1.0) / (g_steps + 2.0)) * (y if y > 0.0 else 0.0)
                            victim_cost = regret * g_dcopy if hts[2] >= capacity else 0.0
                            worth = c * saving > (1.0 - c) * (link_cost + g_issue) + victim_cost
                        if not worth:
                            g_refused += 1
                            continue
                        if not _make_room(ls, capacity, prot, prev, nxt, hts, incache, inflight, unused, needs,
                                          jobmap, ji, kc, cnt):
                            continue
                        _insert(obj, True, prev, nxt, hts, incache, inflight, unused, kc)
                        p_obj[npf] = obj
                        npf += 1
                        prot[obj] = ls
                        g_issued += 1
                        slot = (ls + jj) % ring
                        q = iss_n[slot]
                        iss[slot, q, 0] = obj
                        iss[slot, q, 1] = jj
                        iss_n[slot] = q + 1
                        occ = g_pcopy / g_engines
                        st = g_link if g_link > g_now else g_now
                        g_link = st + occ
                        y = g_idle - occ
                        g_idle = y if y > 0.0 else 0.0
                        st = d_link if d_link > d_now else d_now  # it queues behind the duel's demand copies
                        d_link = st + occ
                        d_next += g_issue
                        iss_at[slot, q] = st + g_pcopy
                else:
                    for k in range(a0, a1):
                        if npf >= limit:
                            break
                        obj = a_obj[k]
                        if incache[obj]:
                            prot[obj] = ls
                            continue
                        if not _make_room(ls, capacity, prot, prev, nxt, hts, incache, inflight, unused, needs,
                                          jobmap, ji, kc, cnt):
                            continue
                        _insert(obj, True, prev, nxt, hts, incache, inflight, unused, kc)
                        p_obj[npf] = obj
                        npf += 1
                        prot[obj] = ls
            if gated:
                g_now = g_next
                d_now = d_next
                s_now = s_next
            # ---- the engine: the plan's copies ----
            nr = 0
            nw = 0
            for k in range(nh):
                obj = h_obj[k]
                j = jobmap[obj]
                if j < 0:
                    r_obj[nr] = obj
                    r_tok[nr] = h_tok[k]
                    nr += 1
                    continue
                late += 1
                if ji[j, J_STATE] == QUEUED and not ji[j, J_DEMAND]:  # promoted ahead of the prefetches
                    ji[j, J_DEMAND] = 1
                    s = ji[j, J_SRV]
                    _q_unlink(srv, ji, s, j, S_PQH)
                    _q_push(srv, ji, s, j, S_DQH)
                w_job[nw] = j
                w_obj[nw] = obj
                w_tok[nw] = h_tok[k]
                w_extra[nw] = 0.0
                nw += 1
            hits += nh
            for k in range(nm):
                obj = m_obj[k] if m_cached[k] else -1
                j, ji, jf, free = _new_copy(obj, d_bytes, 1, d_copy, deq_d, now, srv, ev_t, ji, jf, free, cnt,
                                            jobmap)
                w_job[nw] = j
                w_obj[nw] = obj
                w_tok[nw] = m_tok[k]
                w_extra[nw] = 0.0 if obj >= 0 else d_deq
                nw += 1
            misses += nm
            for k in range(npf):
                j, ji, jf, free = _new_copy(p_obj[k], p_bytes, 0, p_copy, deq_p, now, srv, ev_t, ji, jf, free, cnt,
                                            jobmap)
            prefetched += npf
            h += copy_issue * (nm + npf)
            # experts: hits first, then those waiting for a copy
            for k in range(nr):
                obj = r_obj[k]
                dq = needs[obj]
                needs[obj] = 0.0
                ge = expert_gpu[r_tok[k]] + dq
                comp += ge
                h, ready_at = expert_ready(h, g, expert_host)
                g = expert_run(h, ready_at, ge)
            for k in range(nw):
                j = w_job[k]
                h, ready_at = expert_ready(h, g, expert_host)
                if ji[j, J_STATE] != DONE:
                    if ready_at > now:
                        cnt[C_SEQ] += 1
                        t = now + (ready_at - now)
                        _advance(t, cnt[C_SEQ], srv, ev_t, ji, jf, free, cnt, jobmap, inflight, needs)
                        now = t
                    if ji[j, J_STATE] != DONE:
                        now = _wait_done(j, srv, ev_t, ji, jf, free, cnt, jobmap, inflight, needs)
                if now > ready_at:
                    stall += now - ready_at
                    ready_at = now
                obj = w_obj[k]
                dq = 0.0
                if obj >= 0:
                    dq = needs[obj]
                    needs[obj] = 0.0
                ge = expert_gpu[w_tok[k]] + w_extra[k] + dq
                comp += ge
                g = expert_run(h, ready_at, ge)
        h, g, dispatch = end_pass(out, p, h, g, start, comp, stall, hits, late, misses, prefetched)
        tot_c += comp
        tot_s += stall
        tot_d += dispatch
        tot_late += late
    if h > now:
        cnt[C_SEQ] += 1
        now = now + (h - now)
    _advance(INF, BIG, srv, ev_t, ji, jf, free, cnt, jobmap, inflight, needs)
    moved = 0
    for e in range(n_engines):
        moved += srv[e, S_MOVED]
    size = hts[2]
    final = np.empty(size, np.int64)  # what the cache holds at the end, first victim first
    obj = hts[0]
    for i in range(size):
        final[i] = obj
        obj = nxt[obj]
    gate_counts = np.array([g_steps, g_missed, g_issued, g_refused, g_held], np.int64)
    return (out, kc, h, tot_c, tot_s, tot_d, tot_late, moved, cnt[C_CANCELLED], final, inflight, unused,
            gate_counts)


if numba is not None:
    _ll_append = numba.njit(cache=True)(_ll_append)
    _ll_remove = numba.njit(cache=True)(_ll_remove)
    _q_push = numba.njit(cache=True)(_q_push)
    _q_unlink = numba.njit(cache=True)(_q_unlink)
    _pick = numba.njit(cache=True)(_pick)
    _process = numba.njit(cache=True)(_process)
    _advance = numba.njit(cache=True)(_advance)
    _wait_done = numba.njit(cache=True)(_wait_done)
    _submit_copy = numba.njit(cache=True)(_submit_copy)
    _grow = numba.njit(cache=True)(_grow)
    _evict = numba.njit(cache=True)(_evict)
    _insert = numba.njit(cache=True)(_insert)
    _make_room = numba.njit(cache=True)(_make_room)
    _new_copy = numba.njit(cache=True)(_new_copy)
    _kernel = numba.njit(cache=True)(_kernel)


def run_compiled(stream: RequestStream, costs: CostTables, planner: Planner, cache: ExpertCache, *,
                 demand_dtype: str, prefetch_dtype: str, copy_engines: int) -> TimedOutcome:
    """The timed run of an :func:`eligible` setting; the cache (and the gate's counters) end as the
    planner would leave them."""
    policy = cache.policies[0]
    gate = planner.gate
    t = gate.t if gate is not None else None
    if 1 in stream.ahead:
        a_start, a_obj, _ = stream.ahead[1]
    else:
        a_start, a_obj = np.zeros(stream.n_layer_steps + 1, np.int32), np.zeros(0, ids(stream.req_obj).dtype)
    step_s = np.asarray(t.step_s, np.float64) if t is not None else np.zeros(1)
    res = _kernel(
        np.asarray(stream.pass_ls_start, np.int64), np.asarray(stream.ls_req_start),
        ids(stream.req_obj), np.asarray(stream.req_tokens, np.int32),
        ids(stream.ls_layer), np.asarray(a_start), ids(a_obj),
        np.asarray(stream.layout.obj_layer, np.int64),
        np.asarray(costs.dense_gpu, np.float64), np.asarray(costs.dense_host, np.float64),
        np.asarray(costs.expert_gpu, np.float64), stream.layout.n_objects, cache.capacity,
        type(policy) is LRU, max(1, copy_engines), costs.router_sync, costs.layer_step, costs.copy_issue,
        costs.expert_host, costs.copy[demand_dtype], costs.copy[prefetch_dtype],
        int(costs.expert_bytes[demand_dtype]), int(costs.expert_bytes[prefetch_dtype]),
        costs.dequant[demand_dtype], float(costs.dequant[demand_dtype]), float(costs.dequant[prefetch_dtype]),
        int(planner.max_prefetch), gate is not None, step_s,
        float(t.prefetch_copy_s) if t else 0.0, float(t.demand_copy_s) if t else 0.0,
        int(t.engines) if t else 1, int(t.max_distance) if t else 1, float(t.copy_issue_s) if t else 0.0,
        float(gate.LAG) if gate else 0.0, float(gate.SLACK) if gate else 0.0, int(gate.PROBE) if gate else 1)
    out, kc, total, tot_c, tot_s, tot_d, tot_late, moved, cancelled, final, inflight, unused, gc = res
    order = final.tolist()
    cache.adopt(order, dict(zip(("hits", "misses", "bypasses", "prefetches", "prefetch_hits", "wasted_prefetches",
                                 "evictions", "peak_slots"), kc)),
                in_flight=[obj for obj in order if inflight[obj]], unused=[obj for obj in order if unused[obj]])
    if gate is not None:
        gate.steps, gate.steps_missed, gate.issued, gate.refused, gate.held = (int(v) for v in gc)
    steps = step_records(stream, out)
    return TimedOutcome(total_s=float(total), steps=steps, late_hits=int(tot_late), bytes_moved=int(moved),
                        cancelled_copies=int(cancelled), compute_s=float(tot_c), stall_s=float(tot_s),
                        dispatch_s=float(tot_d), events=[], engine="compiled (pre-gated prefetch)")


def warm_up() -> float:
    """Compile (or load from numba's cache) the kernel on a tiny input; returns the seconds it took."""
    import time

    if numba is None:
        return 0.0
    start = time.perf_counter()
    one, one32 = np.array([0, 1], np.int64), np.array([0, 1], np.int32)  # the stream's offset types
    # object ids and layers as int16: the stream's types for every model with up to 32767 experts in all
    _kernel(one, one32, np.zeros(1, np.int16), np.ones(1, np.int32), np.zeros(1, np.int16), one32, np.zeros(1, np.int16),
            np.zeros(2, np.int64), np.zeros(1), np.zeros(1), np.zeros(2), 2, 1, True, 1, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0,
            1, 1, 0.0, 0.0, 0.0, 0, True, np.zeros(1), 1.0, 1.0, 1, 3, 0.0,
            CostGate.LAG, CostGate.SLACK, CostGate.PROBE)
    return time.perf_counter() - start
