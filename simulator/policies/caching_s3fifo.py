"""S3-FIFO (Yang et al., SOSP 2023): a recency/frequency hybrid from three FIFO queues.

Why for experts: most experts a token brings in are not used again soon
(one-hit wonders at a small cache), while a few are used at nearly every
token. S3-FIFO admits new objects to a small FIFO (10% of the slots); one
touched at least twice while there moves to the main FIFO, the others leave and
are remembered in a ghost FIFO of ids (90% of the slots' worth); an object
that comes back while remembered goes straight to main. Main is a CLOCK with a
2-bit counter: a touched object is reinserted with its count decremented.

The queue rules follow libCacheSim's ``S3FIFO`` (its default parameters; the
tests compare miss counts). Two additions for the mechanism's rules: an
object that the current layer step protects is passed over (moved to its
queue's head unchanged), and a small queue of one slot is allowed (libCacheSim
caches nothing in the small queue below 20 slots).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from pregate.simulator.policies.caching import CachingPolicy
from pregate.simulator.policies.registry import CACHING, param


@CACHING.register("s3fifo")
class S3FIFO(CachingPolicy):
    """Small FIFO + main 2-bit CLOCK + ghost ids; victims from small unless main is over its share."""

    @dataclass(frozen=True)
    class Params:
        small_ratio: float = param(0.10, "share of the slots given to the small (probation) FIFO", low=0.0, high=1.0)
        ghost_ratio: float = param(0.90, "evicted ids remembered, as a share of the slots", low=0.0)
        to_main: int = param(2, "touches in the small queue that earn a place in main", low=1)

    def __init__(self, layout=None, seed: int = 0, small_ratio: float = 0.10, ghost_ratio: float = 0.90,
                 to_main: int = 2):
        super().__init__(layout, seed)
        self.small_ratio, self.ghost_ratio, self.to_main = small_ratio, ghost_ratio, to_main
        self.small: OrderedDict[int, None] = OrderedDict()  # oldest first
        self.main: OrderedDict[int, None] = OrderedDict()
        self.ghost: OrderedDict[int, None] = OrderedDict()
        self.freq: dict[int, int] = {}
        self.set_capacity(64)
        self.has_evicted = False

    def set_capacity(self, capacity: int) -> None:
        self.capacity = max(1, int(capacity))
        self.small_cap = max(1, int(self.capacity * self.small_ratio))
        self.main_cap = self.capacity - self.small_cap
        self.ghost_cap = int(self.capacity * self.ghost_ratio)

    def on_hit(self, obj, now, next_use):
        self.freq[obj] += 1

    def on_insert(self, obj, now, next_use):
        # the victim that made room was remembered first; libCacheSim looks the new object up
        # in the ghost before evicting, so the ghost is trimmed to its size only now
        remembered = obj in self.ghost
        if remembered:
            del self.ghost[obj]
        while len(self.ghost) > self.ghost_cap:
            self.ghost.popitem(last=False)
        if remembered:
            self.main[obj] = None
        elif not self.has_evicted and len(self.small) >= self.small_cap:
            self.main[obj] = None  # before the first eviction the small queue does not grow past its share
        else:
            self.small[obj] = None
        self.freq[obj] = 0

    def on_remove(self, obj):
        del self.freq[obj]
        if obj in self.small:
            del self.small[obj]
        else:
            del self.main[obj]

    def _remember(self, obj):
        if self.ghost_cap <= 0:
            return
        self.ghost[obj] = None
        self.ghost.move_to_end(obj)

    def victim(self, protected):
        self.has_evicted = True
        # one choice of queue per eviction round, as libCacheSim's evict: the small queue is
        # scanned until it gives up an object (or empties, moving all to main); then choose again
        while self.small or self.main:
            if len(self.main) > self.main_cap or not self.small:
                found = self._from_main(protected)
                if found == -1 and self.small:  # main is all in use: the small queue gives one up
                    found = self._from_small(protected)
            else:
                found = self._from_small(protected)
            if found is not None:
                return found if found >= 0 else None
        return None

    def _from_main(self, protected):
        """CLOCK over main: a touched object goes round again with one touch less."""
        passed = 0
        while self.main:
            if passed >= len(self.main):
                return -1  # every object in main is protected
            obj = next(iter(self.main))
            if obj in protected:
                self.main.move_to_end(obj)
                passed += 1
                continue
            f = self.freq[obj]
            if f >= 1:
                self.main.move_to_end(obj)
                self.freq[obj] = min(f, 3) - 1
                passed = 0
                continue
            return obj
        return None

    def _from_small(self, protected):
        """The oldest in small leaves (into the ghost) unless touched enough to move to main."""
        passed = 0
        while self.small:
            if passed >= len(self.small):
                return self._from_main(protected) if self.main else -1
            obj = next(iter(self.small))
            if obj in protected:
                self.small.move_to_end(obj)
                passed += 1
                continue
            if self.freq[obj] >= self.to_main:
                del self.small[obj]
                self.main[obj] = None
                self.freq[obj] = 0
                passed = 0
                continue
            self._remember(obj)
            return obj
        return None
