"""The GPU expert cache mechanism, shared by both drivers and the live executor.

The mechanism owns what every policy must respect: a fixed number of expert
slots (global, or split evenly per MoE layer), the state of each slot
(resident or in flight), and the rule that an expert in use or in flight for
the current layer step is never evicted. Which expert to evict is the caching
policy's business; the mechanism only asks it.

It also keeps the logical counts both drivers must agree on: hits, misses,
prefetches issued, used and wasted, evictions, and bypasses (a demand miss
that found every slot protected streams the expert through a staging buffer
without caching it, so capacity is never exceeded).

Pinned experts (a static placement, or every expert for ``resident``) are
placed before the first layer step: they are resident, take their slots out
of the caching policy's partition, and are never evicted, so a cache that is
all pinned moves nothing after warm-up.
"""

from __future__ import annotations

from dataclasses import dataclass

from pregate.simulator.stream import Layout

RESIDENT = 1
IN_FLIGHT = 2


@dataclass
class CacheCounts:
    hits: int = 0  # the expert was resident or already in flight when requested
    misses: int = 0  # demand fetches (including bypasses)
    bypasses: int = 0  # misses served through a staging buffer, not cached
    cpu: int = 0  # misses computed on the CPU (part of misses)
    admissions: int = 0  # of those, copied into the cache in the background
    prefetches: int = 0  # prefetch copies issued
    prefetch_hits: int = 0  # prefetched experts that were later requested
    wasted_prefetches: int = 0  # prefetched experts evicted or left over unused
    evictions: int = 0
    peak_slots: int = 0  # most slots occupied at once

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class ExpertCache:
    """Slots for experts on the GPU; the policy picks victims, the mechanism enforces rules.

    ``policy_factory()`` makes one caching policy per partition (one partition,
    or one per MoE layer with ``per_layer``). ``capacity`` is in experts.
    """

    def __init__(self, layout: Layout, capacity: int, policy_factory, per_layer: bool = False, pinned=()):
        self.layout = layout
        self.per_layer = per_layer
        if per_layer:
            n = layout.n_layers
            self.capacities = [capacity // n + (1 if i < capacity % n else 0) for i in range(n)]
        else:
            self.capacities = [capacity]
        self.capacity = capacity
        self.policy_factory = policy_factory
        self._obj_layer = layout.obj_layer
        self.pinned = frozenset(pinned)
        for obj in self.pinned:  # pinned slots are not the policy's to order
            part = self._obj_layer[obj] if per_layer else 0
            self.capacities[part] -= 1
            if self.capacities[part] < 0:
                raise ValueError(f"{len(self.pinned)} pinned experts do not fit a cache of {capacity}")
        self.policies = [policy_factory() for _ in self.capacities]
        for policy, cap in zip(self.policies, self.capacities):
            policy.set_capacity(cap)
        self.sizes = [0] * len(self.capacities)
        self.state: dict[int, int] = dict.fromkeys(sorted(self.pinned), RESIDENT)
        self.unused_prefetch: set[int] = set()
        self.protected: set[int] = set()
        self.counts = CacheCounts(peak_slots=len(self.pinned))
        self.evict_log: list[int] | None = None  # the current plan's evictions (set by the planner)
        self.last_victim: int | None = None  # what the latest make_room evicted (-1: a slot was free)

    def partition(self, obj: int) -> int:
        return self._obj_layer[obj] if self.per_layer else 0

    # ---- layer boundaries ---------------------------------------------------
    def begin_layer(self, layer: int, now: int, needed) -> None:
        """A layer step starts: its experts are in use until the next one starts."""
        self.protected = set(needed)
        for policy in self.policies:
            policy.on_layer(layer, now)

    # ---- requests -----------------------------------------------------------
    def hit(self, obj: int, now: int, next_use: int) -> None:
        self.counts.hits += 1
        if self.pinned and obj in self.pinned:
            return
        if obj in self.unused_prefetch:
            self.unused_prefetch.discard(obj)
            self.counts.prefetch_hits += 1
        self.policies[self.partition(obj)].on_hit(obj, now, next_use)

    def make_room(self, obj: int) -> int | None:
        """Free a slot in ``obj``'s partition. Returns the evicted object, -1 if a slot
        was free, or None if every occupant is protected."""
        part = self.partition(obj)
        if self.sizes[part] < self.capacities[part]:
            self.last_victim = -1
            return -1
        victim = self.policies[part].victim(self.protected)
        self.last_victim = victim
        if victim is None:
            return None
        self.evict(victim)
        return victim

    def is_full(self, obj: int) -> bool:
        """Would a new copy of ``obj`` have to evict something?"""
        part = self.partition(obj)
        return self.sizes[part] >= self.capacities[part]

    def evict(self, obj: int) -> None:
        part = self.partition(obj)
        del self.state[obj]
        self.sizes[part] -= 1
        self.policies[part].on_remove(obj)
        self.counts.evictions += 1
        if self.evict_log is not None:
            self.evict_log.append(obj)
        if obj in self.unused_prefetch:
            self.unused_prefetch.discard(obj)
            self.counts.wasted_prefetches += 1

    def insert(self, obj: int, now: int, next_use: int, prefetch: bool, state: int = IN_FLIGHT) -> None:
        part = self.partition(obj)
        self.state[obj] = state
        self.sizes[part] += 1
        policy = self.policies[part]
        (policy.on_prefetch if prefetch else policy.on_insert)(obj, now, next_use)
        if prefetch:
            self.unused_prefetch.add(obj)
            self.counts.prefetches += 1
        occupied = len(self.state)
        if occupied > self.counts.peak_slots:
            self.counts.peak_slots = occupied

    def miss(self, obj: int, now: int, next_use: int) -> bool:
        """A demand miss: make room and insert. False means bypass (nothing evictable)."""
        self.counts.misses += 1
        if self.make_room(obj) is None:
            self.counts.bypasses += 1
            return False
        self.insert(obj, now, next_use, prefetch=False)
        return True

    def cpu_miss(self, obj: int, now: int, next_use: int, admit: bool) -> bool:
        """A miss computed on the CPU; with ``admit`` the expert is also copied into the cache in the
        background if a slot can be freed. True when it was admitted (a copy to issue)."""
        c = self.counts
        c.misses += 1
        c.cpu += 1
        if not admit or self.make_room(obj) is None:
            return False
        self.insert(obj, now, next_use, prefetch=False)
        c.admissions += 1
        return True

    def prefetch(self, obj: int, now: int, next_use: int) -> bool:
        """Try to start a prefetch; False if the expert is already there or no slot can be freed."""
        if obj in self.state:
            return False
        if self.make_room(obj) is None:
            return False
        self.insert(obj, now, next_use, prefetch=True)
        return True

    def shadow(self) -> "ExpertCache":
        """A fresh cache of the same size, policy and pins (the prefetch gate's counterfactual)."""
        return ExpertCache(self.layout, self.capacity, self.policy_factory, per_layer=self.per_layer,
                           pinned=self.pinned)

    def clear(self) -> None:
        """Evict everything but the pinned experts (counted as evictions; unused prefetches as wasted)."""
        for obj in list(self.state):
            if obj not in self.pinned:
                self.evict(obj)

    def adopt(self, order, counts: dict, in_flight=(), unused=()) -> None:
        """Take over the state a compiled run left, so that later reads see what it did.

        The compiled engines apply this mechanism's rules, and those of an order-keeping policy
        (lru, fifo), to a fresh cache in compiled code; this is the one place their result comes
        back. ``order`` lists the cached experts from the policy's next victim to its last: the
        policy is rebuilt by inserting them in that order, which is exact for a policy that
        orders by insertion and use. ``counts`` are the kernel's totals, by field name."""
        if len(self.policies) != 1 or self.pinned:
            raise ValueError("adopt needs one global partition with no pinned experts")
        policy = self.policies[0]
        for obj in self.state:  # whatever the policy held before the run leaves it first
            policy.on_remove(obj)
        in_flight = set(in_flight)
        self.state = {obj: (IN_FLIGHT if obj in in_flight else RESIDENT) for obj in order}
        for obj in order:
            policy.on_insert(obj, 0, 0)
        self.sizes = [len(self.state)]
        self.unused_prefetch = set(unused)
        for name, value in counts.items():
            if not hasattr(self.counts, name):
                raise ValueError(f"unknown cache count {name!r}")
            setattr(self.counts, name, int(value))

    def landed(self, obj: int) -> None:
        """A copy finished: the expert is resident (if it was not evicted meanwhile)."""
        if self.state.get(obj) == IN_FLIGHT:
            self.state[obj] = RESIDENT

    def finish(self) -> CacheCounts:
        """End of the run: prefetched experts never used count as wasted."""
        self.counts.wasted_prefetches += len(self.unused_prefetch)
        self.unused_prefetch.clear()
        return self.counts

    def check(self) -> None:
        """Invariants (used by the tests): sizes match states, capacity holds."""
        sizes = [0] * len(self.capacities)
        for obj in self.state:
            if obj not in self.pinned:
                sizes[self.partition(obj)] += 1
        assert all(self.state.get(obj) == RESIDENT for obj in self.pinned), "a pinned expert left the cache"
        assert sizes == self.sizes, (sizes, self.sizes)
        for size, cap in zip(self.sizes, self.capacities):
            assert size <= cap, (size, cap)
