"""The cost-aware prefetch gate: issue a prefetch only when it is expected to pay for itself.

Why a gate, and why here: a speculation policy only ranks experts; whether a
copy is worth starting depends on the hardware and on what the link is doing.
On a transfer-bound machine (a Mixtral expert takes ~14 ms over PCIe, a layer
step ~1 ms of compute) every wrong prefetch takes a full copy's worth of link
time from the demand misses queued behind it, and a right one saves at most
the compute it overlaps; on an overlap-friendly machine the same prefetch is
nearly free. One mechanism in the planner applies this to every speculation
policy, so no policy needs its own notion of cost.

The gate runs on a model clock computed from precomputed numbers only (the
cost tables' seconds per copy and per layer step, the number of copy
engines) and from the planner's own decisions, never from the timed run's
clock: the fast replay, the timed run and the executor on a trace therefore
make identical decisions.

For a candidate expert for target layer step ``ls + j``, named at rank ``r``
among the policy's distance-``j`` candidates:

* ``c``: confidence, the precision measured so far of rank-``r``,
  distance-``j`` predictions of this policy on this stream (every candidate is
  scored when its target layer step routes, issued or not), with a Beta(1, 1)
  prior;
* saving if right: the demand stall it avoids, ``demand_copy`` minus how late
  it would land after the target layer's router (``arrival - t_target``),
  at least 0. ``arrival`` is when the link's queue clears (the model clock's
  ``link``) plus one copy; ``t_target`` is now plus the layer steps' seconds
  until the target;
* cost if wrong (``1 - c``): the part of its link time that does not fit in
  the link's idle time before the next layer step's router, times the chance
  that layer step has a demand miss to delay (measured so far);
* cost of the victim (only when the partition is full): the chance, measured
  so far, that a prefetch's victim is requested before the prefetch's target,
  times one demand copy.

The prefetch is issued iff ``c * saving > cost_if_wrong * (1 - c) + victim
cost``. The horizon (how many layers ahead) adapts as in ExpertFlow's adaptive
step: distance ``j`` is considered only while every distance up to ``j`` has
a measured precision above the victim-regret rate, the break-even point on an
idle link.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PrefetchTiming:
    """The numbers the gate needs, precomputed by the code that builds the planner."""

    prefetch_copy_s: float  # one prefetch copy (dtype of prefetches)
    demand_copy_s: float  # one demand copy (dtype of demand misses)
    engines: int  # copies that run at once
    step_s: list[float]  # [ls] seconds from ls's router result to ls+1's, without stalls
    max_distance: int = 3  # farthest target considered


def timing_from_costs(stream, costs, copy_engines: int, demand_dtype: str, prefetch_dtype: str) -> PrefetchTiming:
    """Per-layer-step seconds from the cost tables: this step's experts (GPU or host issue,
    whichever is longer, per expert), then the next step's dense work, router read and planning."""
    tokens = stream.req_tokens.astype(np.int64)
    gpu = np.asarray(costs.expert_gpu)[tokens] if len(tokens) else np.zeros(0)
    per_req = np.maximum(gpu, costs.expert_host)
    starts = stream.ls_req_start
    csum = np.concatenate([[0.0], np.cumsum(per_req)])
    experts = csum[starts[1:]] - csum[starts[:-1]]
    dense = np.maximum(np.asarray(costs.dense_gpu), np.asarray(costs.dense_host)) + costs.router_sync + costs.layer_step
    next_dense = np.append(dense[1:], 0.0) if len(dense) else dense
    step = experts + next_dense
    return PrefetchTiming(float(costs.copy[prefetch_dtype]), float(costs.copy[demand_dtype]), max(1, int(copy_engines)),
                          step.tolist())


class CostGate:
    """The gate's model clock and the statistics it learns from the planner's own decisions."""

    RANKS = 8  # ranks beyond this share one precision estimate

    def __init__(self, timing: PrefetchTiming):
        self.t = timing
        self.now = 0.0  # model time at which the current layer step's router result is known
        self.link = 0.0  # model time at which the copy queue clears
        self.tried: dict[tuple[int, int], int] = {}
        self.right: dict[tuple[int, int], int] = {}
        self.pending: dict[int, list[tuple[int, int, int]]] = {}  # target ls -> (obj, j, rank)
        self.victims: dict[int, list[int]] = {}  # target ls -> victims of prefetches aimed at it
        self.watch: dict[int, int] = {}  # victim -> latest target ls it must survive to
        self.victim_n = 0
        self.victim_regret = 0
        self.steps = 0
        self.steps_missed = 0
        self.issued = 0
        self.refused = 0
        self._idle = 0.0

    # ---- statistics ---------------------------------------------------------
    def confidence(self, j: int, rank: int) -> float:
        key = (j, min(rank, self.RANKS - 1))
        return (self.right.get(key, 0) + 1.0) / (self.tried.get(key, 0) + 2.0)

    def distance_precision(self, j: int) -> float:
        tried = sum(n for (d, _), n in self.tried.items() if d == j)
        right = sum(n for (d, _), n in self.right.items() if d == j)
        return (right + 1.0) / (tried + 2.0)

    def regret_rate(self) -> float:
        return (self.victim_regret + 1.0) / (self.victim_n + 5.0)

    def miss_rate(self) -> float:
        return (self.steps_missed + 1.0) / (self.steps + 2.0)

    def horizon(self) -> int:
        floor = self.regret_rate()
        h = 0
        for j in range(1, self.t.max_distance + 1):
            if self.distance_precision(j) <= floor:
                break
            h = j
        return h

    # ---- the planner's calls ------------------------------------------------
    def begin(self, ls: int, needed) -> None:
        """Layer step ``ls`` has routed: score the predictions aimed at it, and victims' fate."""
        needed = set(needed)
        for obj, j, rank in self.pending.pop(ls, ()):
            key = (j, min(rank, self.RANKS - 1))
            self.tried[key] = self.tried.get(key, 0) + 1
            if obj in needed:
                self.right[key] = self.right.get(key, 0) + 1
        if self.watch:
            for obj in needed:
                if obj in self.watch:
                    del self.watch[obj]
                    self.victim_regret += 1
        for obj in self.victims.pop(ls, ()):
            if self.watch.get(obj) == ls:
                del self.watch[obj]

    def after_demand(self, ls: int, n_misses: int) -> None:
        """Demand copies go first: they occupy the link from now on."""
        self.steps += 1
        if n_misses:
            self.steps_missed += 1
            start = self.link if self.link > self.now else self.now
            self.link = start + n_misses * self.t.demand_copy_s / self.t.engines
        step = self.t.step_s[ls]
        self._next = max(self.now + step, self.link if n_misses else 0.0)
        self._idle = max(0.0, self._next - max(self.link, self.now))

    def note(self, ls: int, obj: int, j: int, rank: int) -> None:
        self.pending.setdefault(ls + j, []).append((obj, j, rank))

    def worth(self, ls: int, j: int, rank: int, has_victim: bool) -> bool:
        t = self.t
        c = self.confidence(j, rank)
        t_target = self.now + sum(t.step_s[ls:ls + j])
        start = self.link if self.link > self.now else self.now
        arrival = start + t.prefetch_copy_s
        saving = t.demand_copy_s - max(0.0, arrival - t_target)
        if saving <= 0.0:
            return False
        occupancy = t.prefetch_copy_s / t.engines
        spill = max(0.0, occupancy - self._idle)
        cost = (1.0 - c) * self.miss_rate() * spill
        if has_victim:
            cost += self.regret_rate() * t.demand_copy_s
        return c * saving > cost

    def issued_prefetch(self, ls: int, j: int, victim: int | None) -> None:
        self.issued += 1
        occupancy = self.t.prefetch_copy_s / self.t.engines
        start = self.link if self.link > self.now else self.now
        self.link = start + occupancy
        self._idle = max(0.0, self._idle - occupancy)
        if victim is not None and victim >= 0:
            self.victim_n += 1
            target = ls + j
            self.watch[victim] = max(self.watch.get(victim, target), target)
            self.victims.setdefault(target, []).append(victim)

    def end(self, ls: int) -> None:
        """Advance the model clock to the next router result: compute, or the last demand copy."""
        self.now = self._next
