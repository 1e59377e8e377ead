"""The decisions of one layer step, shared by the fast replay and the timed run.

Why one planner: the two drivers must agree on every count, so neither makes
its own cache decisions. At each layer step the planner tells the cache which
experts are in use, sorts the requests into hits, misses and bypasses, asks the
speculation policy what to prefetch, and tells the cache about each prefetch.
The drivers differ only in what they do with the plan: the replay counts it,
the timed run schedules it on the simulated hardware.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pregate.simulator.cache import ExpertCache
from pregate.simulator.policies.speculation import LayerView, SpeculationPolicy, require_ahead
from pregate.simulator.stream import NEVER, RequestStream, as_list


@dataclass
class LayerPlan:
    ls: int
    hits: list[tuple[int, int]] = field(default_factory=list)  # (obj, tokens) found resident or in flight
    misses: list[tuple[int, int, bool]] = field(default_factory=list)  # (obj, tokens, cached) fetched on demand
    cpu: list[tuple[int, int]] = field(default_factory=list)  # (obj, tokens) computed on the CPU
    prefetches: list[int] = field(default_factory=list)
    evicted: list[int] = field(default_factory=list)


class Planner:
    """Walks the layer steps of a stream, one call to :meth:`plan` each, in order."""

    def __init__(self, stream: RequestStream, cache: ExpertCache, speculation: SpeculationPolicy,
                 cpu_misses: bool = False, max_prefetch: int = 0, future_for_cache: bool = False):
        self.stream = stream
        self.cache = cache
        self.spec = speculation
        self.cpu_misses = cpu_misses
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
        self.pass_end = as_list(s.pass_ls_start[1:])
        self.ahead = {j: (as_list(a[0]), as_list(a[1]), as_list(a[2])) for j, a in s.ahead.items()} \
            if speculation.needs_ahead else {}
        self.wants_prefetch = type(speculation).predict is not SpeculationPolicy.predict

    def _future(self, ls: int):
        start, objs = self.req_start, self.req_obj
        return lambda j: objs[start[ls + j] : start[ls + j + 1]]

    def plan(self, ls: int) -> LayerPlan:
        cache = self.cache
        lo, hi = self.req_start[ls], self.req_start[ls + 1]
        objs = self.req_obj[lo:hi]
        layer = self.ls_layer[ls]
        cache.begin_layer(layer, lo, objs)
        plan = LayerPlan(ls)
        state = cache.state
        for i in range(lo, hi):
            obj = self.req_obj[i]
            if obj in state:
                cache.hit(obj, i, self.req_next[i])
                plan.hits.append((obj, self.req_tokens[i]))
            elif self.cpu_misses:
                cache.counts.misses += 1
                plan.cpu.append((obj, self.req_tokens[i]))
            else:
                cached = cache.miss(obj, i, self.req_next[i])
                plan.misses.append((obj, self.req_tokens[i], cached))
        if self.wants_prefetch:
            pas = self.ls_pass[ls]
            remaining = self.pass_end[pas] - 1 - ls
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
            for obj in wanted:
                if len(plan.prefetches) >= limit:
                    break
                if obj in state:
                    continue
                nxt = self.stream.next_use(obj, after) if self.future_for_cache else NEVER
                if cache.prefetch(obj, after, nxt):
                    plan.prefetches.append(obj)
                    cache.protected.add(obj)  # not evicted by the rest of this round
        return plan
