"""The decisions of one layer step, shared by the fast replay and the timed run.

Why one planner: the two drivers must agree on every count, so neither makes
its own cache decisions. At each layer step the planner tells the cache which
experts are in use, sorts the requests into hits, misses and bypasses, asks the
speculation policy what to prefetch, and tells the cache about each prefetch.
The drivers differ only in what they do with the plan: the replay counts it,
the timed run schedules it on the simulated hardware.

Two rules hold for every speculation policy:

* protection: an expert that this layer step's speculation names stays
  protected for the rest of the round, whether it was resident already or was
  just prefetched, so a later prefetch of the same round never evicts it (nor
  an expert the current layer step uses);
* the cost gate (:mod:`pregate.simulator.gate`, when the planner is given a
  :class:`~pregate.simulator.gate.PrefetchTiming`): a candidate is prefetched
  only when its expected saving exceeds its expected cost, on a model clock
  computed from precomputed numbers, so both drivers decide the same.

With ``cpu_misses`` a miss is computed on the CPU (``plan.cpu``); with
``admit_cpu_misses`` it is also copied into the cache in the background
(``plan.admits``); with a :class:`~pregate.simulator.policies.placement.SideTiming`
each miss goes to the CPU or is copied, whichever the model clock says
finishes first, and a CPU-run miss is admitted only while the link is idle.
The cache counts every decision itself; evictions are listed in ``plan.evicted``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pregate.simulator.cache import ExpertCache
from pregate.simulator.gate import CostGate, PrefetchTiming
from pregate.simulator.policies.placement import SideClock, SideTiming
from pregate.simulator.policies.speculation import LayerView, SpeculationPolicy, require_ahead
from pregate.simulator.stream import NEVER, RequestStream, as_list


@dataclass
class LayerPlan:
    ls: int
    hits: list[tuple[int, int]] = field(default_factory=list)  # (obj, tokens) found resident or in flight
    misses: list[tuple[int, int, bool]] = field(default_factory=list)  # (obj, tokens, cached) fetched on demand
    cpu: list[tuple[int, int]] = field(default_factory=list)  # (obj, tokens) computed on the CPU
    admits: list[int] = field(default_factory=list)  # CPU-run misses also copied in, in the background
    prefetches: list[int] = field(default_factory=list)
    evicted: list[int] = field(default_factory=list)  # experts this layer step's decisions evicted, in order


class Planner:
    """Walks the layer steps of a stream, one call to :meth:`plan` each, in order.

    The stream's fields are read like lists: numpy arrays through windows, and
    plain lists as they are, so a stream that grows while a model runs (the live
    executor's) is planned by this same class, each layer step appended before
    its call to :meth:`plan`.
    """

    # False: the rule before protection existed (only a just-prefetched expert is protected), to
    # re-price records made by executors that followed it
    protect_named = True

    def __init__(self, stream: RequestStream, cache: ExpertCache, speculation: SpeculationPolicy,
                 cpu_misses: bool = False, max_prefetch: int = 0, future_for_cache: bool = False,
                 timing: PrefetchTiming | None = None, reset_per_group: bool = False,
                 admit_cpu_misses: bool = False, sides: SideTiming | None = None):
        self.stream = stream
        self.reset_per_group = reset_per_group
        self.cache = cache
        self.spec = speculation
        self.cpu_misses = cpu_misses
        self.admit_cpu_misses = admit_cpu_misses
        self.use_sides(sides)
        self.max_prefetch = max_prefetch
        self.future_for_cache = future_for_cache
        if speculation.needs_ahead:
            require_ahead(speculation.name, stream.meta.ahead_distance)
        # The stream's arrays, read like lists through windows (list speed, bounded memory).
        s = stream
        self.req_start = as_list(s.ls_req_start)
        self.req_obj = as_list(s.req_obj)
        self.req_tokens = as_list(s.req_tokens)
        self.req_next = as_list(s.req_next)
        self.ls_layer = as_list(s.ls_layer)
        self.ls_pass = as_list(s.ls_pass)
        self.ls_tokens = as_list(s.ls_tokens)
        self.pass_group = as_list(s.pass_group)
        self.pass_start = as_list(s.pass_ls_start)
        self.ahead = {j: (as_list(a[0]), as_list(a[1]), as_list(a[2])) for j, a in s.ahead.items()} \
            if speculation.needs_ahead else {}
        self.wants_prefetch = type(speculation).predict is not SpeculationPolicy.predict
        self.use_timing(timing)

    def use_sides(self, sides: SideTiming | None) -> None:
        """Choose per miss between the CPU and a copy on the cost model's clock (None: no choice)."""
        self.side = SideClock(sides) if sides is not None else None

    def use_timing(self, timing: PrefetchTiming | None) -> None:
        """Gate every prefetch on its expected cost (None: issue whatever the policy names).

        The gate measures the damage prefetches do against a shadow cache (same policy
        and size) that sees the demand requests alone."""
        self.gate = CostGate(timing) if timing is not None and self.wants_prefetch else None
        self.shadow = self.cache.shadow() if self.gate is not None else None

    def _shadow_step(self, ls: int, layer: int, lo: int, hi: int, objs) -> None:
        shadow = self.shadow
        shadow.begin_layer(layer, lo, objs)
        state = shadow.state
        for i in range(lo, hi):
            obj = self.req_obj[i]
            if obj in state:
                shadow.hit(obj, i, self.req_next[i])
            elif not self.cpu_misses:
                shadow.miss(obj, i, self.req_next[i])
            elif shadow.cpu_miss(obj, i, self.req_next[i], self.admit_cpu_misses):
                shadow.landed(obj)

    def _future(self, ls: int):
        start, objs = self.req_start, self.req_obj
        return lambda j: objs[start[ls + j] : start[ls + j + 1]]

    def plan(self, ls: int) -> LayerPlan:
        cache = self.cache
        lo, hi = self.req_start[ls], self.req_start[ls + 1]
        objs = self.req_obj[lo:hi]
        layer = self.ls_layer[ls]
        plan = LayerPlan(ls)
        cache.evict_log = plan.evicted
        if self.reset_per_group and ls:
            pas = self.ls_pass[ls]
            if self.ls_pass[ls - 1] != pas and self.pass_group[pas] != self.pass_group[pas - 1]:
                cache.clear()  # a new batch of sequences starts with an empty cache
                if self.gate is not None:
                    self.shadow.clear()
        cache.begin_layer(layer, lo, objs)
        state = cache.state
        side = self.side
        for i in range(lo, hi):
            obj = self.req_obj[i]
            if obj in state:
                cache.hit(obj, i, self.req_next[i])
                plan.hits.append((obj, self.req_tokens[i]))
            elif self.cpu_misses:
                tokens = self.req_tokens[i]
                if side is not None and not side.choose_cpu(tokens):  # a copy finishes first
                    plan.misses.append((obj, tokens, cache.miss(obj, i, self.req_next[i])))
                    continue
                admit = self.admit_cpu_misses and (side is None or side.link_idle())
                if cache.cpu_miss(obj, i, self.req_next[i], admit):
                    plan.admits.append(obj)
                    if side is not None:
                        side.admitted()
                plan.cpu.append((obj, tokens))
            else:
                cached = cache.miss(obj, i, self.req_next[i])
                plan.misses.append((obj, self.req_tokens[i], cached))
        gate = self.gate
        if gate is not None:
            self._shadow_step(ls, layer, lo, hi, objs)
            gate.observe(cache.counts, self.shadow.counts)
            gate.begin(ls, objs, [o for o, _ in plan.hits])
            gate.after_demand(ls, len(plan.misses))
        if self.wants_prefetch:
            pas = self.ls_pass[ls]
            remaining = self.pass_start[pas + 1] - 1 - ls
            ahead = {}
            for j, (starts, a_obj, a_score) in self.ahead.items():
                a, b = starts[ls], starts[ls + 1]
                if a < b:
                    ahead[j] = (a_obj[a:b], a_score[a:b])
            view = LayerView(ls=ls, group=self.pass_group[pas], pass_index=pas, layer=layer, remaining=remaining,
                             needed=objs, ahead=ahead, tokens=self.ls_tokens[ls],
                             future=self._future(ls) if self.spec.needs_future else None)
            wanted = self.spec.predict(view)
            limit = self.max_prefetch or len(wanted)
            after = hi if ls + 1 >= len(self.ls_layer) else self.req_start[ls + 1]
            if gate is not None:
                self._gated(ls, layer, remaining, wanted, limit, after, plan)
            else:
                for obj in wanted:
                    if len(plan.prefetches) >= limit:
                        break
                    if obj in state:
                        # already resident (or in flight): it is wanted for a later layer of this
                        # round, so no later prefetch of the same round may evict it
                        if self.protect_named:
                            cache.protected.add(obj)
                        continue
                    nxt = self.stream.next_use(obj, after) if self.future_for_cache else NEVER
                    if cache.prefetch(obj, after, nxt):
                        plan.prefetches.append(obj)
                        cache.protected.add(obj)  # not evicted by the rest of this round
        if gate is not None:
            gate.end(ls)
        if side is not None:
            side.end(ls)
        cache.evict_log = None
        return plan

    def _gated(self, ls, layer, remaining, wanted, limit, after, plan) -> None:
        """The policy's candidates through the cost gate, nearest target layer first within rank."""
        cache, gate, state = self.cache, self.gate, self.cache.state
        obj_layer = cache._obj_layer
        horizon = min(gate.horizon(), remaining)
        ranks: dict[int, int] = {}
        seen = set()
        for obj in wanted:
            j = obj_layer[obj] - layer
            if obj in seen or j < 1 or j > remaining or self.ls_layer[ls + j] != obj_layer[obj]:
                continue  # named twice, or not a later layer of this pass: nothing to aim at
            seen.add(obj)
            rank = ranks.get(j, 0)
            ranks[j] = rank + 1
            if obj in state:
                if self.protect_named:
                    cache.protected.add(obj)  # named for a later layer: kept for the rest of the round
                continue
            # scored only when not resident: those are the ones a prefetch would copy, and they
            # are right less often than the popular experts the cache already holds
            gate.note(ls, obj, j, rank)
            if j > horizon or len(plan.prefetches) >= limit:
                continue
            if not gate.worth(ls, j, rank, cache.is_full(obj)):
                gate.refused += 1
                continue
            nxt = self.stream.next_use(obj, after) if self.future_for_cache else NEVER
            if cache.prefetch(obj, after, nxt):
                plan.prefetches.append(obj)
                cache.protected.add(obj)
                gate.issued_prefetch(ls, j, obj)
