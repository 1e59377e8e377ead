"""The fast replay: counts only (hits, misses, prefetches used and wasted), no timing.

Two paths, one answer. The general path drives the shared planner and cache
mechanism, so it supports every policy and agrees with the timed run by
construction. For the settings a sweep ranks most often (no speculation, a
global cache, lru / fifo / lfu / belady) there are specialised loops over
plain integer lists that give the same counts several times faster; the tests
check them against the general path on random streams.

"Hits" here include late hits: whether a prefetch landed in time is a timing
question only the timed run answers (its hits + late_hits equal these hits).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass

from pregate.simulator.cache import CacheCounts, ExpertCache
from pregate.simulator.planner import Planner
from pregate.simulator.stream import RequestStream


@dataclass
class ReplayCounts:
    requests: int
    hits: int
    misses: int
    bypasses: int
    prefetches: int
    prefetch_hits: int
    wasted_prefetches: int
    evictions: int
    peak_slots: int
    bytes_moved: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def replay_general(stream: RequestStream, cache: ExpertCache, planner: Planner, demand_bytes: int,
                   prefetch_bytes: int) -> ReplayCounts:
    """Every policy: walk the planner over all layer steps and count."""
    moved = 0
    landed = cache.landed
    for ls in range(stream.n_layer_steps):
        plan = planner.plan(ls)
        # background copies of CPU-run misses are copied in the demand dtype
        moved += demand_bytes * (len(plan.misses) + len(plan.admits)) + prefetch_bytes * len(plan.prefetches)
        # Without timing, a copy lands before the next layer step.
        for obj, _, cached in plan.misses:
            if cached:
                landed(obj)
        for obj in plan.admits:
            landed(obj)
        for obj in plan.prefetches:
            landed(obj)
    counts = cache.finish()
    return _from_cache(stream, counts, moved)


def _from_cache(stream: RequestStream, c: CacheCounts, moved: int) -> ReplayCounts:
    return ReplayCounts(stream.n_requests, c.hits, c.misses, c.bypasses, c.prefetches, c.prefetch_hits,
                        c.wasted_prefetches, c.evictions, c.peak_slots, moved)


FAST_POLICIES = ("lru", "fifo", "lfu", "belady")


def replay_fast(stream: RequestStream, policy: str, capacity: int, demand_bytes: int) -> ReplayCounts:
    """Specialised loops for on-demand loading into one global cache (no speculation).

    The in-use rule still holds: while a layer step's requests are served,
    none of that layer step's other experts is evicted. When every request is
    its own layer step (top-1, batch 1) that rule cannot bite and the loop
    skips it.
    """
    objs = stream.req_obj.tolist()
    if stream.max_needed() <= 1:
        bounds = None
    else:
        bounds = stream.ls_req_start  # walked in windows (see _layer_steps)
    if capacity <= 0:
        n = len(objs)
        return ReplayCounts(n, 0, n, n, 0, 0, 0, 0, 0, demand_bytes * n)
    if policy in ("lru", "fifo"):
        hits, misses, bypass, evictions, peak = _lru_fifo(objs, bounds, capacity, policy == "lru")
    elif policy == "lfu":
        hits, misses, bypass, evictions, peak = _lfu(objs, bounds, capacity)
    elif policy == "belady":
        hits, misses, bypass, evictions, peak = _belady(objs, stream.req_next.tolist(), bounds, capacity)
    else:
        raise ValueError(f"no fast loop for '{policy}'")
    return ReplayCounts(len(objs), hits, misses, bypass, 0, 0, 0, evictions, peak, demand_bytes * misses)


def _layer_steps(objs, bounds, window: int = 1 << 16):
    """(lo, hi) per layer step, lazily from the offsets array a window at a time (a list of
    every pair would cost more memory than the stream); None when bounds is None."""
    if bounds is None:
        return None
    return _pairs(bounds, window)


def _pairs(bounds, window):
    for c in range(0, len(bounds) - 1, window):
        part = bounds[c : c + window + 1]
        if not isinstance(part, list):
            part = part.tolist()
        yield from zip(part[:-1], part[1:])


def _lru_fifo(objs, bounds, capacity, is_lru):
    od: OrderedDict[int, None] = OrderedDict()
    hits = evictions = bypass = 0
    if bounds is None:
        move = od.move_to_end
        pop = od.popitem
        size = 0
        for obj in objs:
            if obj in od:
                if is_lru:
                    move(obj)
                hits += 1
            elif size < capacity:
                od[obj] = None
                size += 1
            else:
                pop(last=False)
                od[obj] = None
                evictions += 1
        n = len(objs)
        return hits, n - hits, 0, evictions, capacity if evictions else len(od)
    for lo, hi in _layer_steps(objs, bounds):
        group = objs[lo:hi]
        protected = set(group) if hi - lo > 1 else ()
        for obj in group:
            if obj in od:
                if is_lru:
                    od.move_to_end(obj)
                hits += 1
                continue
            if len(od) >= capacity:
                victim = None
                for cand in od:
                    if cand not in protected:
                        victim = cand
                        break
                if victim is None:
                    bypass += 1
                    continue
                del od[victim]
                evictions += 1
            od[obj] = None
    n = len(objs)
    peak = capacity if evictions or bypass else len(od)
    return hits, n - hits, bypass, evictions, peak


def _lfu_single(objs, capacity):
    """``_lfu`` for one request per layer step (nothing to protect): the tightest loop.

    A heap entry is current iff its stamp is the object's stamp (stamps are unique).
    """
    freq: dict[int, int] = {}
    stamp: dict[int, int] = {}
    heap: list[tuple[int, int, int]] = []
    push, pop = heapq.heappush, heapq.heappop
    hits = evictions = size = 0
    limit = 8 * capacity + 64
    for tick, obj in enumerate(objs, 1):
        f = freq.get(obj)
        if f is not None:
            freq[obj] = f + 1
            stamp[obj] = tick
            push(heap, (f + 1, tick, obj))
            hits += 1
            continue
        if size >= capacity:
            while True:
                _, t, cand = pop(heap)
                if stamp.get(cand) == t:
                    break
            del freq[cand], stamp[cand]
            evictions += 1
        else:
            size += 1
        freq[obj] = 1
        stamp[obj] = tick
        push(heap, (1, tick, obj))
        if len(heap) > limit:
            heap = [(freq[o], stamp[o], o) for o in freq]
            heapq.heapify(heap)
    return hits, len(objs) - hits, 0, evictions, capacity if evictions else len(freq)


def _lfu(objs, bounds, capacity):
    """LFU with LRU tie-break: a heap of (freq, stamp, obj) with lazy invalidation."""
    if bounds is None:
        return _lfu_single(objs, capacity)
    freq: dict[int, int] = {}
    stamp: dict[int, int] = {}
    heap: list[tuple[int, int, int]] = []
    push, pop = heapq.heappush, heapq.heappop
    hits = evictions = bypass = 0
    tick = 0
    steps = _layer_steps(objs, bounds) or [(i, i + 1) for i in range(len(objs))]
    for lo, hi in steps:
        protected = set(objs[lo:hi]) if hi - lo > 1 else ()
        for i in range(lo, hi):
            obj = objs[i]
            tick += 1
            if obj in freq:
                f = freq[obj] + 1
                freq[obj] = f
                stamp[obj] = tick
                push(heap, (f, tick, obj))
                hits += 1
                continue
            if len(freq) >= capacity:
                held = []
                victim = None
                while heap:
                    f, t, cand = pop(heap)
                    if freq.get(cand) != f or stamp[cand] != t:
                        continue  # stale entry
                    if cand in protected:
                        held.append((f, t, cand))
                        continue
                    victim = cand
                    break
                for entry in held:
                    push(heap, entry)
                if victim is None:
                    bypass += 1
                    continue
                del freq[victim], stamp[victim]
                evictions += 1
            freq[obj] = 1
            stamp[obj] = tick
            push(heap, (1, tick, obj))
            if len(heap) > 8 * capacity + 64:
                heap = [(freq[o], stamp[o], o) for o in freq]
                heapq.heapify(heap)
    n = len(objs)
    peak = capacity if evictions or bypass else len(freq)
    return hits, n - hits, bypass, evictions, peak


def _belady_single(objs, nexts, capacity):
    """``_belady`` for one request per layer step (nothing to protect): the tightest loop."""
    nxt: dict[int, int] = {}
    heap: list[tuple[int, int]] = []
    push, pop = heapq.heappush, heapq.heappop
    get = nxt.get
    hits = evictions = size = 0
    limit = 8 * capacity + 64
    for obj, n_i in zip(objs, nexts):
        if obj in nxt:
            nxt[obj] = n_i
            push(heap, (-n_i, obj))
            hits += 1
            continue
        if size >= capacity:
            while True:
                neg, cand = pop(heap)
                if get(cand) == -neg:
                    break
            del nxt[cand]
            evictions += 1
        else:
            size += 1
        nxt[obj] = n_i
        push(heap, (-n_i, obj))
        if len(heap) > limit:
            heap = [(-v, o) for o, v in nxt.items()]
            heapq.heapify(heap)
    return hits, len(objs) - hits, 0, evictions, capacity if evictions else len(nxt)


def _belady(objs, nexts, bounds, capacity):
    """Belady's MIN: a max-heap on next use with lazy invalidation."""
    if bounds is None:
        return _belady_single(objs, nexts, capacity)
    nxt: dict[int, int] = {}
    heap: list[tuple[int, int]] = []
    push, pop = heapq.heappush, heapq.heappop
    hits = evictions = bypass = 0
    steps = _layer_steps(objs, bounds) or [(i, i + 1) for i in range(len(objs))]
    for lo, hi in steps:
        protected = set(objs[lo:hi]) if hi - lo > 1 else ()
        for i in range(lo, hi):
            obj = objs[i]
            n_i = nexts[i]
            if obj in nxt:
                nxt[obj] = n_i
                push(heap, (-n_i, obj))
                hits += 1
                continue
            if len(nxt) >= capacity:
                held = []
                victim = None
                while heap:
                    neg, cand = pop(heap)
                    if nxt.get(cand) != -neg:
                        continue
                    if cand in protected:
                        held.append((neg, cand))
                        continue
                    victim = cand
                    break
                for entry in held:
                    push(heap, entry)
                if victim is None:
                    bypass += 1
                    continue
                del nxt[victim]
                evictions += 1
            nxt[obj] = n_i
            push(heap, (-n_i, obj))
            if len(heap) > 8 * capacity + 64:
                heap = [(-v, o) for o, v in nxt.items()]
                heapq.heapify(heap)
    n = len(objs)
    peak = capacity if evictions or bypass else len(nxt)
    return hits, n - hits, bypass, evictions, peak
