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
  distance-``j`` predictions of this policy on this stream, with a Beta(1, 1)
  prior. Every candidate that was not resident when named is scored when its
  target layer step routes, issued or not (resident ones are skipped: they are
  the popular experts, right more often than the ones a prefetch would copy);
  capped by the share of issued distance-``j`` prefetches that were hits at
  their target, since a right prefetch the caching policy evicts before its
  layer runs (LFU evicts the newcomer first at a small cache) saves nothing;
* saving if right: the demand stall it avoids, less the stall of its own
  late arrival. The target step's other experts compute while a copy is in
  flight, so a demand copy started at the target's router (or when the
  link's queue clears, if later) stalls the step only by what it takes
  beyond the step's work less one expert's share (``step / n``, ``n`` the
  experts of the current step), at most one copy; the prefetch stalls it by
  how much later than that it lands (with many experts per step on a fast
  link, a demand copy hides behind the others' compute and a prefetch saves
  nothing). ``arrival`` is when the link's queue clears (the model clock's
  ``link``) plus one copy; ``t_target`` is now plus the layer steps' seconds
  until the target;
* cost if wrong (``1 - c``): the part of its link time that does not fit in
  the link's idle time before the next layer step's router, times the chance
  that layer step has a demand miss to delay (measured so far);
* cost of the victim (only when the partition is full): the demand misses
  one prefetch has caused so far, times one demand copy. Counting only the
  direct victim's return undercounts badly (on LRU at a small cache each
  eviction shifts the whole eviction order, and misses cascade), so the
  planner keeps a *shadow* cache of the same policy and size that sees the
  demand requests alone (what ``none`` would hold) and the damage is measured
  against it: ``(misses - shadow misses + prefetch hits) / prefetches``, the
  misses each prefetch added beyond the one it saved, with a prior of one
  quarter. Like set dueling in CPU caches, and as deterministic as the rest.

* cost of the issue if wrong (a right one replaces a demand copy's issue):
  the host time to issue one copy (``copy_issue`` of the cost tables for the
  caching policy; with small experts on a fast link this, not the link, is
  what a wasted prefetch costs).

The prefetch is issued iff ``c * saving > (1 - c) * (link cost + issue) + victim cost``,
and only while the prefetching run is not behind the shadow on the model
clock: this run and the shadow each run on a stall-aware model clock
(:class:`DuelClock`: a demand miss waits for its copy, a hit on a prefetch in
flight waits for it), and once this run's clock falls more than
``LAG`` (0.5%) plus ``SLACK`` demand copies behind it, only every
``PROBE``-th layer step may issue one prefetch until it catches up. The per-prefetch
terms price one copy at a time; this end-to-end check catches what they
miss (a policy whose right prefetches still cost more than they save,
through the victims they choose or the order they disturb), for every
speculation policy at once, in the spirit of set dueling. The horizon (how many layers ahead) adapts as in ExpertFlow's adaptive
step: distance ``j`` is considered only while every distance up to ``j`` has
a measured precision above the misses a prefetch causes (the break-even
point on an idle link).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pregate.simulator.stream import as_list


@dataclass(frozen=True, eq=False)
class PrefetchTiming:
    """The numbers the gate needs, precomputed by the code that builds the planner."""

    prefetch_copy_s: float  # one prefetch copy (dtype of prefetches)
    demand_copy_s: float  # one demand copy (dtype of demand misses)
    engines: int  # copies that run at once
    step_s: "list[float] | np.ndarray"  # [ls] seconds from ls's router result to ls+1's, without stalls
    max_distance: int = 3  # farthest target considered
    copy_issue_s: float = 0.0  # host seconds to issue one copy


def timing_from_costs(stream, costs, copy_engines: int, demand_dtype: str, prefetch_dtype: str,
                      chunk: int = 1 << 16) -> PrefetchTiming:
    """Per-layer-step seconds from the cost tables: this step's experts (GPU or host issue,
    whichever is longer, per expert), then the next step's dense work, router read and planning.

    Computed a chunk of layer steps at a time into one float64 array (8 bytes per layer step):
    a list of Python floats, and whole-stream temporaries, would cost several times the stream's
    own arrays at millions of rows. The running sum of the experts' seconds carries across the
    chunks in the same order of additions as one cumulative sum, so every value is the one the
    whole-stream formula gives."""
    starts = stream.ls_req_start
    n_ls = len(starts) - 1
    gpu_of = np.asarray(costs.expert_gpu, np.float64)
    dense_gpu, dense_host = np.asarray(costs.dense_gpu), np.asarray(costs.dense_host)
    step = np.empty(max(n_ls, 0), np.float64)
    carry = 0.0  # cumulative seconds of every expert before the chunk
    for a in range(0, n_ls, chunk):
        b = min(a + chunk, n_ls)
        lo, hi = int(starts[a]), int(starts[b])
        per_req = np.maximum(gpu_of[stream.req_tokens[lo:hi]], costs.expert_host)
        csum = np.cumsum(np.concatenate([[carry], per_req]))
        rel = np.asarray(starts[a:b + 1], np.int64) - lo
        experts = csum[rel[1:]] - csum[rel[:-1]]
        carry = float(csum[-1])
        # the next layer step's dense work (none after the last)
        c = min(b + 1, n_ls)
        dense = np.maximum(dense_gpu[a + 1:c], dense_host[a + 1:c]) + costs.router_sync + costs.layer_step
        next_dense = np.append(dense, 0.0) if c == b else dense
        step[a:b] = experts + next_dense
    return PrefetchTiming(float(costs.copy[prefetch_dtype]), float(costs.copy[demand_dtype]), max(1, int(copy_engines)),
                          step, copy_issue_s=float(costs.copy_issue))


class CostGate:
    """The gate's model clock and the statistics it learns from the planner's own decisions."""

    RANKS = 8  # ranks beyond this share one precision estimate
    LAG = 0.005  # share of the shadow's model time the prefetching run may fall behind before prefetches stop
    SLACK = 4.0  # demand copies' worth of model time allowed on top (the first prefetches' cost)
    PROBE = 16  # while behind, one prefetch every PROBE layer steps may still go out

    def __init__(self, timing: PrefetchTiming):
        self.t = timing
        self.step_s = as_list(timing.step_s)  # read like a list, a window at a time
        self.now = 0.0  # model time at which the current layer step's router result is known
        self.link = 0.0  # model time at which the copy queue clears
        self.tried: dict[tuple[int, int], int] = {}
        self.right: dict[tuple[int, int], int] = {}
        self.pending: dict[int, list[tuple[int, int, int]]] = {}  # target ls -> (obj, j, rank)
        self.landed_tried: dict[int, int] = {}  # distance -> issued prefetches whose target has routed
        self.landed_right: dict[int, int] = {}  # distance -> of those, found in the cache and used there
        self.issued_to: dict[int, list[tuple[int, int]]] = {}  # target ls -> (obj, j) prefetched for it
        self.caused = 0  # demand misses beyond the shadow's, plus prefetch hits: what prefetches caused
        self.prefetched = 0
        self.steps = 0
        self.steps_missed = 0
        self.issued = 0
        self.refused = 0
        self.held = 0  # prefetches refused because the run was behind the shadow's model clock
        self._idle = 0.0
        # the duel: this run and the shadow (demand requests alone), each on a stall-aware clock
        self.duel_real = DuelClock(timing)
        self.duel_shadow = DuelClock(timing)
        self._shadow_copies = 0
        self._shadow_step_misses = 0
        self._arrivals: dict[int, list[tuple[int, float]]] = {}  # target ls -> (obj, model arrival)
        self._late = 0.0
        self._n_needed = 1
        self._probe_step = -1

    # ---- statistics ---------------------------------------------------------
    def confidence(self, j: int, rank: int) -> float:
        """Right and still cached at the target: the candidates' precision, capped by the share of
        issued distance-``j`` prefetches that were hits at their target (a right prefetch that the
        caching policy evicts before its layer runs saves nothing)."""
        key = (j, min(rank, self.RANKS - 1))
        named = (self.right.get(key, 0) + 1.0) / (self.tried.get(key, 0) + 2.0)
        landed = (self.landed_right.get(j, 0) + 3.0) / (self.landed_tried.get(j, 0) + 4.0)  # prior 3/4
        return named if named < landed else landed

    def distance_precision(self, j: int) -> float:
        tried = sum(n for (d, _), n in self.tried.items() if d == j)
        right = sum(n for (d, _), n in self.right.items() if d == j)
        return (right + 1.0) / (tried + 2.0)

    def regret_rate(self) -> float:
        """Demand misses caused per prefetch, measured against the shadow cache (prior 1/4)."""
        return min(3.0, max(0.0, (self.caused + 0.5) / (self.prefetched + 2.0)))

    def observe(self, real, shadow) -> None:
        """The cache's and the shadow's counts so far (CacheCounts)."""
        self.caused = real.misses - shadow.misses + real.prefetch_hits
        self.prefetched = real.prefetches
        copies = shadow.misses - shadow.cpu  # CPU-run misses take no link time
        self._shadow_step_misses = copies - self._shadow_copies
        self._shadow_copies = copies

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
    def begin(self, ls: int, needed, hits=()) -> None:
        """Layer step ``ls`` has routed: score the predictions and the prefetches aimed at it."""
        needed = set(needed)
        self._n_needed = len(needed)
        issued = self.issued_to.pop(ls, ())
        arrivals = self._arrivals.pop(ls, ())
        self._late = 0.0
        if issued:
            hit = set(hits)
            for obj, at in arrivals:
                if obj in hit and at > self._late:
                    self._late = at
            for obj, j in issued:
                self.landed_tried[j] = self.landed_tried.get(j, 0) + 1
                if obj in hit:
                    self.landed_right[j] = self.landed_right.get(j, 0) + 1
        for obj, j, rank in self.pending.pop(ls, ()):
            key = (j, min(rank, self.RANKS - 1))
            self.tried[key] = self.tried.get(key, 0) + 1
            if obj in needed:
                self.right[key] = self.right.get(key, 0) + 1

    def after_demand(self, ls: int, n_misses: int) -> None:
        """Demand copies go first: they occupy the link from now on."""
        self.steps += 1
        if n_misses:
            self.steps_missed += 1
            start = self.link if self.link > self.now else self.now
            self.link = start + n_misses * self.t.demand_copy_s / self.t.engines
        step = self.step_s[ls]
        self._next = max(self.now + step, self.link if n_misses else 0.0)
        self._idle = max(0.0, self._next - max(self.link, self.now))
        self.duel_real.step(step, self._n_needed, n_misses, self._late)
        self.duel_shadow.step(step, self._n_needed, self._shadow_step_misses, 0.0)

    def behind(self) -> bool:
        """Has prefetching so far cost model time against the shadow (beyond ``LAG`` of it plus
        ``SLACK`` demand copies)? While it has, only one prefetch every ``PROBE`` layer steps may go
        out, so a policy that pays off after a costly start can still catch up."""
        real, shadow = self.duel_real.now, self.duel_shadow.now
        lag = real - shadow - self.LAG * shadow - self.SLACK * self.t.demand_copy_s
        if lag <= 0.0:
            return False
        if self.steps % self.PROBE == 0 and self._probe_step != self.steps:
            self._probe_step = self.steps  # this step's one probe
            return False
        return True

    def note(self, ls: int, obj: int, j: int, rank: int) -> None:
        self.pending.setdefault(ls + j, []).append((obj, j, rank))

    def worth(self, ls: int, j: int, rank: int, has_victim: bool) -> bool:
        t = self.t
        if self.behind():
            self.held += 1
            return False
        c = self.confidence(j, rank)
        t_target = self.now + sum(self.step_s[ls:ls + j])
        start = self.link if self.link > self.now else self.now
        arrival = start + t.prefetch_copy_s
        # the target step's experts compute while a copy is in flight: a demand copy (queued
        # behind the link from the target's router on) stalls only by what it takes beyond the
        # step's work, less one expert's share; the prefetch, by how late it lands
        step_target = self.step_s[ls + j] if ls + j < len(self.step_s) else self.step_s[ls]
        tail = step_target / max(1, self._n_needed)
        t_end = t_target + step_target
        demand_stall = max(0.0, (self.link if self.link > t_target else t_target) + t.demand_copy_s + tail - t_end)
        saving = min(t.demand_copy_s, demand_stall) - max(0.0, arrival + tail - t_end)
        if saving <= 0.0:
            return False
        occupancy = t.prefetch_copy_s / t.engines
        spill = max(0.0, occupancy - self._idle)
        link_cost = self.miss_rate() * spill
        victim_cost = self.regret_rate() * t.demand_copy_s if has_victim else 0.0
        return c * saving > (1.0 - c) * (link_cost + t.copy_issue_s) + victim_cost

    def issued_prefetch(self, ls: int, j: int, obj: int = -1) -> None:
        """A prefetch went out: it occupies the link, and its fate is scored at its target."""
        self.issued += 1
        self.issued_to.setdefault(ls + j, []).append((obj, j))
        occupancy = self.t.prefetch_copy_s / self.t.engines
        start = self.link if self.link > self.now else self.now
        self.link = start + occupancy
        self._idle = max(0.0, self._idle - occupancy)
        arrival = self.duel_real.prefetch(occupancy, self.t.prefetch_copy_s)
        self._arrivals.setdefault(ls + j, []).append((obj, arrival))

    def end(self, ls: int) -> None:
        """Advance the model clock to the next router result: compute, or the last demand copy."""
        self.now = self._next
        self.duel_real.end()
        self.duel_shadow.end()


class DuelClock:
    """A model clock for the gate's duel, with the stalls that make a prefetching run slower or
    faster than the shadow: a layer step of ``n`` experts with a demand miss ends no sooner than
    the copy lands plus one expert's share of the step (``step / n``: the other experts compute
    while it is in flight), likewise for a hit on a prefetch still in flight, and the host's
    issue of every copy adds to the step."""

    def __init__(self, timing: PrefetchTiming):
        self.t = timing
        self.now = 0.0
        self.link = 0.0
        self._next = 0.0

    def step(self, step_s: float, experts: int, misses: int, late: float) -> None:
        finish = self.now + step_s
        tail = step_s / max(1, experts)
        if misses:
            start = self.link if self.link > self.now else self.now
            self.link = start + misses * self.t.demand_copy_s / self.t.engines
            finish = max(finish, self.link + tail)
        if late > self.now:
            finish = max(finish, late + tail)
        self._next = finish + misses * self.t.copy_issue_s  # the host issues each copy

    def prefetch(self, occupancy: float, copy_s: float) -> float:
        """A prefetch joins the link's queue after this step's demand copies; returns its arrival.
        Its issue takes host time from the layer step."""
        start = self.link if self.link > self.now else self.now
        self.link = start + occupancy
        self._next += self.t.copy_issue_s
        return start + copy_s

    def end(self) -> None:
        self.now = self._next
