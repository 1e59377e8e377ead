"""Caching (eviction) policies: which GPU-resident expert to give up for a new one.

The cache mechanism (:mod:`pregate.simulator.cache`) owns the slots and the
rules (capacity, in-use protection); a policy only keeps its own ordering and
names a victim among the objects it tracks, skipping the protected ones. This
split follows libCacheSim: one mechanism, many eviction policies.

Hooks, all called by the mechanism: ``on_layer(layer, now)`` when a layer step
starts (``now`` counts requests), ``on_hit(obj, now, next_use)``,
``on_insert(obj, now, next_use)``, ``on_remove(obj)`` and
``victim(protected) -> obj | None``. ``next_use`` is the index of the object's
next request, known only in simulation (NEVER when unknown or absent); only
``belady`` reads it.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict

from dataclasses import dataclass

from pregate.simulator.policies.registry import CACHING, param


class CachingPolicy:
    """Base: tracks nothing, evicts nothing. Subclasses override the hooks."""

    name = "base"
    needs_future = False

    def __init__(self, layout=None, seed: int = 0):
        self.layout = layout

    def set_capacity(self, capacity: int) -> None:
        """The slots of the partition this policy orders (told once, before any request)."""

    def on_layer(self, layer: int, now: int) -> None:
        pass

    def on_hit(self, obj: int, now: int, next_use: int) -> None:
        pass

    def on_insert(self, obj: int, now: int, next_use: int) -> None:
        raise NotImplementedError

    def on_prefetch(self, obj: int, now: int, next_use: int) -> None:
        """A prefetch copy took a slot: by default like any insertion. A policy that counts uses
        overrides it, since a prefetched expert has not been used (its first hit is)."""
        self.on_insert(obj, now, next_use)

    def on_remove(self, obj: int) -> None:
        raise NotImplementedError

    def victim(self, protected) -> int | None:
        raise NotImplementedError


@CACHING.register("lru", fast_replay="lru")
class LRU(CachingPolicy):
    """Least recently used: evict the expert whose last access is oldest."""

    def __init__(self, layout=None, seed: int = 0):
        super().__init__(layout, seed)
        self.order: OrderedDict[int, None] = OrderedDict()

    def on_hit(self, obj, now, next_use):
        self.order.move_to_end(obj)

    def on_insert(self, obj, now, next_use):
        self.order[obj] = None

    def on_remove(self, obj):
        del self.order[obj]

    def victim(self, protected):
        for obj in self.order:
            if obj not in protected:
                return obj
        return None


@CACHING.register("fifo", fast_replay="fifo")
class FIFO(LRU):
    """First in, first out: evict the expert that was loaded longest ago; hits change nothing."""

    def on_hit(self, obj, now, next_use):
        pass


class KeyedHeap:
    """Objects ordered by a key that changes only when the object is touched.

    Each touch pushes the object's new key; an entry whose key is no longer
    the object's own is dropped when it reaches the top. The least key among
    the objects not protected then costs a few heap operations, where a scan
    would price every cached object on every eviction (hundreds of objects,
    and the planner runs inside the executor's step). Keys must be unique
    (they end in an access tick), so the minimum is the scan's.
    """

    def __init__(self):
        self.heap: list = []
        self.key: dict[int, tuple] = {}

    def set(self, obj: int, key: tuple) -> None:
        self.key[obj] = key
        heapq.heappush(self.heap, (key, obj))
        if len(self.heap) > 4 * len(self.key) + 64:  # drop the stale entries now and then
            self.heap = [(k, o) for o, k in self.key.items()]
            heapq.heapify(self.heap)

    def remove(self, obj: int) -> None:
        del self.key[obj]

    def least(self, protected) -> int | None:
        heap, held, found = self.heap, [], None
        while heap:
            key, obj = heap[0]
            if self.key.get(obj) != key:
                heapq.heappop(heap)
            elif obj in protected:
                held.append(heapq.heappop(heap))
            else:
                found = obj
                break
        for entry in held:
            heapq.heappush(heap, entry)
        return found


@CACHING.register("lfu", fast_replay="lfu")
class LFU(CachingPolicy):
    """Least frequently used while resident; ties go to the least recently used.

    Counts start at 1 on insertion and are forgotten on eviction, as in
    libCacheSim's LFU (whose miss counts the tests reproduce).
    """

    keyed_heap = True  # (count, last access) changes only on a touch: keep a heap, not a scan

    def __init__(self, layout=None, seed: int = 0):
        super().__init__(layout, seed)
        self.freq: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.tick = 0
        self.ranked = KeyedHeap()

    def _stamp(self, obj):
        self.tick += 1
        self.last[obj] = self.tick
        if self.keyed_heap:
            self.ranked.set(obj, (self.freq[obj], self.tick))

    def on_hit(self, obj, now, next_use):
        self.freq[obj] += 1
        self._stamp(obj)

    def on_insert(self, obj, now, next_use):
        self.freq[obj] = 1
        self._stamp(obj)

    def on_remove(self, obj):
        del self.freq[obj], self.last[obj]
        if self.keyed_heap:
            self.ranked.remove(obj)

    def key(self, obj):
        return (self.freq[obj], self.last[obj])

    def victim(self, protected):
        return self.ranked.least(protected) if self.keyed_heap else self.scan(protected)

    def scan(self, protected):
        """The least ``key`` over every evictable object (for keys that move with time)."""
        best, best_key = None, None
        for obj in self.freq:
            if obj in protected:
                continue
            k = self.key(obj)
            if best_key is None or k < best_key:
                best, best_key = obj, k
        return best


@CACHING.register("lfu-decay")
class DecayedLFU(LFU):
    """LFU whose counts halve every ``half_life`` layer steps, so old popularity fades.

    Scores are kept as count x 2^(t/half_life) at the time of the last update,
    which makes comparison between objects a plain float comparison after
    bringing each to the current time.
    """

    keyed_heap = False

    @dataclass(frozen=True)
    class Params:
        half_life: float = param(0.0, "layer steps over which a count halves (0: eight passes, 8 x the MoE layers)",
                                 low=0.0)

    def __init__(self, layout=None, seed: int = 0, half_life: float = 0.0):
        super().__init__(layout, seed)
        n_layers = layout.n_layers if layout is not None else 12
        self.half_life = half_life or 8.0 * n_layers
        self.score: dict[int, float] = {}
        self.stamp: dict[int, int] = {}
        self.step = 0

    def on_layer(self, layer, now):
        self.step += 1

    def _decayed(self, obj):
        return self.score[obj] * math.exp2(-(self.step - self.stamp[obj]) / self.half_life)

    def on_hit(self, obj, now, next_use):
        super().on_hit(obj, now, next_use)
        self.score[obj] = self._decayed(obj) + 1.0
        self.stamp[obj] = self.step

    def on_insert(self, obj, now, next_use):
        super().on_insert(obj, now, next_use)
        self.score[obj] = 1.0
        self.stamp[obj] = self.step

    def on_remove(self, obj):
        super().on_remove(obj)
        del self.score[obj], self.stamp[obj]

    def key(self, obj):
        return (self._decayed(obj), self.last[obj])


@CACHING.register("least-stale")
class LeastStale(LFU):
    """SpecMD's least-stale eviction, as we read it for layer-ordered access.

    A forward pass visits MoE layers in order, so an expert of the layer that
    just ran is the one whose next use lies furthest ahead (a whole pass away),
    while an expert of the next layer is about to be used. The victim is the
    evictable expert whose layer comes round again last; ties go to the lower
    count, then the older access. MoE routing is not LRU-friendly (SpecMD), and
    this ordering is what a cyclic layer walk calls for.
    """

    keyed_heap = False  # the layer order moves with every layer step: one heap per layer instead

    def __init__(self, layout=None, seed: int = 0):
        super().__init__(layout, seed)
        self.current = 0
        self.n_layers = layout.n_layers if layout is not None else 1
        self.layer: dict[int, int] = {}
        self.by_layer: dict[int, KeyedHeap] = {}

    def on_layer(self, layer, now):
        self.current = layer

    def _stamp(self, obj):
        super()._stamp(obj)
        if obj in self.layer:
            self.by_layer[self.layer[obj]].set(obj, (self.freq[obj], self.tick))

    def on_insert(self, obj, now, next_use):
        layer = self.layout.layer_of(obj) if self.layout is not None else 0
        self.layer[obj] = layer
        self.by_layer.setdefault(layer, KeyedHeap())
        super().on_insert(obj, now, next_use)

    def on_remove(self, obj):
        super().on_remove(obj)
        self.by_layer[self.layer.pop(obj)].remove(obj)

    def key(self, obj):
        # Distance (in layers) until this expert's layer runs again; larger = staler.
        wait = (self.layer[obj] - self.current - 1) % self.n_layers
        return (-wait, self.freq[obj], self.last[obj])

    def victim(self, protected):
        # the layer that just ran comes round last, then the one before it, ...: the first
        # with an evictable expert gives its least (count, last access), as ``key`` orders
        for back in range(self.n_layers):
            heap = self.by_layer.get((self.current - back) % self.n_layers)
            if heap is not None and heap.key:
                obj = heap.least(protected)
                if obj is not None:
                    return obj
        return None


@CACHING.register("pinned-hot")
class PinnedHot(LFU):
    """Keep the experts that were hottest over the whole run so far (counts survive eviction).

    With a stable routing distribution this converges to pinning the most
    popular experts, the static choice several offloading systems make.
    """

    keyed_heap = False

    def __init__(self, layout=None, seed: int = 0):
        super().__init__(layout, seed)
        self.total: dict[int, int] = {}

    def on_hit(self, obj, now, next_use):
        super().on_hit(obj, now, next_use)
        self.total[obj] = self.total.get(obj, 0) + 1

    def on_insert(self, obj, now, next_use):
        super().on_insert(obj, now, next_use)
        self.total[obj] = self.total.get(obj, 0) + 1

    def on_prefetch(self, obj, now, next_use):
        # not a use: counting it would let wrong prefetches (whose counts survive eviction)
        # pin themselves over the experts that are hot
        super().on_insert(obj, now, next_use)
        self.total.setdefault(obj, 0)

    def key(self, obj):
        return (self.total[obj], self.last[obj])


@CACHING.register("belady", fast_replay="belady")
class Belady(CachingPolicy):
    """Belady's MIN: evict the expert whose next request lies furthest in the future.

    The future comes with the request stream (each request carries the index
    of the same expert's next request). MIN minimises the number of misses of
    a demand-paged cache; with prefetching it minimises all fetches, not the
    demand misses (see Demand-MIN in simulator/README.md).
    """

    needs_future = True

    def __init__(self, layout=None, seed: int = 0):
        super().__init__(layout, seed)
        self.next: dict[int, int] = {}

    def on_hit(self, obj, now, next_use):
        self.next[obj] = next_use

    def on_insert(self, obj, now, next_use):
        self.next[obj] = next_use

    def on_remove(self, obj):
        del self.next[obj]

    def victim(self, protected):
        best, best_next = None, -1
        for obj, nxt in self.next.items():
            if obj not in protected and nxt > best_next:
                best, best_next = obj, nxt
        return best
