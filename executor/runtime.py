"""The offloading runtime: the simulator's cache mechanism and policies driving real slots.

One :class:`OffloadRuntime` per run. At every MoE layer step the model (a
Hugging Face model, the small MoE, or the trace-driven synthetic model) asks
:meth:`OffloadRuntime.layer` for the experts it needs. The runtime asks the
simulator's own :class:`~pregate.simulator.planner.Planner` (which drives the
same :class:`~pregate.simulator.cache.ExpertCache` and the same registered
speculation and caching policy objects as the simulator's replay and timed
run) for the plan of that layer step, and carries it out: the plan's
evictions free slots, demand misses, then background copies of CPU-run
misses, then prefetches are copied on the copy stream, and the experts come
back in the planner's order (hits first, then misses, then experts computed
on the host). Pinned experts (static placements, and every expert for
``resident``) are loaded into their slots once, before the first layer step.

Because the planner's decisions depend only on what is in the cache, not on
whether a copy has landed yet, the executor makes exactly the decisions of
the fast replay on the same request stream. Only the split of hits into hits
and late hits (in flight when needed) depends on timing, and on the CPU,
where copies complete synchronously, there are no late hits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from pregate.executor.device import Device, ExecutorError, now
from pregate.executor.slots import SlotPool
from pregate.executor.store import HostStore
from pregate.simulator.api import prefetch_timing, side_timing_for
from pregate.simulator.assemble import make_cache, planner_options
from pregate.simulator.planner import Planner
from pregate.simulator.policies import COMPRESSION, SPECULATION
from pregate.simulator.policies.build import make_speculation
from pregate.simulator.settings import Settings, check_per_layer
from pregate.simulator.summary import RunSummary

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ExecutorError(f"unknown dtype '{name}' (valid: {', '.join(DTYPES)})")
    return DTYPES[name]


def form_of(dtype_name: str, gpu_dtype: str) -> str:
    """Host copy form for a compression dtype name: 'full' when it is the GPU dtype."""
    return "full" if dtype_name == gpu_dtype or dtype_name in DTYPES else dtype_name


@dataclass
class Work:
    """One expert of a layer step: where its weights are (``slot`` -1: on the host)."""

    obj: int
    tokens: int
    slot: int


@dataclass
class StepStat:
    """One forward pass as measured: latency and what the cache did in it."""

    pass_index: int
    decode: bool
    tokens: int
    latency_s: float
    stall_s: float
    hits: int = 0
    late_hits: int = 0
    misses: int = 0
    prefetches: int = 0
    plan_s: float = 0.0  # host time in :meth:`OffloadRuntime.layer` (planning, issuing copies)
    route_s: float = 0.0  # host time from issuing the router to holding its result (the sync)
    dense_s: float = 0.0  # host time issuing the dense blocks
    expert_s: float = 0.0  # host time issuing the experts (and the loop's output buffer and residual add)
    layer_steps: int = 0
    blocks: int = 0
    experts: int = 0


# StepStat's host time by phase of the run loop and the work it counted
PHASES = ("plan_s", "route_s", "dense_s", "expert_s", "layer_steps", "blocks", "experts")


@dataclass
class Decision:
    """What the planner decided at one layer step (for comparing with the replay)."""

    ls: int
    hits: list[int] = field(default_factory=list)
    misses: list[tuple[int, bool]] = field(default_factory=list)
    prefetches: list[int] = field(default_factory=list)
    evicted: list[int] = field(default_factory=list)
    admits: list[int] = field(default_factory=list)


def make_policies(settings: Settings, layout, capacity: int, planner_factory, source=None, stream=None):
    """Cache, speculation and planner exactly as the simulator builds them for ``settings``
    (``stream``: the trace's request stream, None for a live model)."""
    spec_cls = SPECULATION.get(settings.speculation)
    check_per_layer(capacity, layout.n_layers, settings.per_layer, settings.cache)
    cache, buffering = make_cache(layout, capacity, settings, stream)
    if buffering.chooses_side and stream is None:
        raise ExecutorError(f"buffering '{settings.buffering}' decides each miss from a trace's cost model, which a "
                            "live model does not have; execute a trace (--trace), or use cpu_compute")
    spec = make_speculation(spec_cls, layout, settings, source)
    planner = planner_factory(cache, spec, **planner_options(settings, buffering))
    if stream is not None:  # on a trace: the simulator's cost gate and side choice, same numbers
        planner.use_timing(prefetch_timing(stream, settings))
        planner.use_sides(side_timing_for(stream, settings))
    planner.reset_per_group = settings.reset_cache_per_sequence
    return cache, planner, buffering


class OffloadRuntime:
    """Slots on the device, experts on the host, decisions from the simulator's planner."""

    def __init__(self, device: Device, store: HostStore, layout, settings: Settings, capacity: int,
                 planner_factory, gpu_dtype: str, poison: bool = False, record: bool = False):
        self.device = device
        self.store = store
        self.spec = store.spec
        self.settings = settings
        self.layout = layout
        self.gpu_dtype = gpu_dtype
        comp = COMPRESSION.get(settings.compression)()
        self.demand_form = form_of(comp.demand_dtype(gpu_dtype), gpu_dtype)
        self.prefetch_form = form_of(comp.prefetch_dtype(gpu_dtype), gpu_dtype)
        for form in {self.demand_form, self.prefetch_form} - {"full"}:
            store.add_form(form)
        self.cache, self.planner, self.buffering = make_policies(
            settings, layout, capacity, planner_factory, stream=getattr(planner_factory, "stream", None))
        self.resident = self.buffering.all_resident
        self._views: dict[int, dict[str, torch.Tensor]] = {}
        self.pool = SlotPool(device, store, self.cache.capacity, torch_dtype(gpu_dtype), poison=poison)
        self.pool.load_pinned(sorted(self.cache.pinned))  # warm-up: not counted as moved bytes
        for slot in range(self.pool.n_slots):  # views made once here, not on a slot's first use in a step
            self._slot_views(slot)
        self.record = record
        self.decisions: list[Decision] = []
        self.steps: list[StepStat] = []
        self._pass: StepStat | None = None
        self._stall_events: list = []
        self._pass_start = 0.0
        self._copy_start = 0.0
        self.late_hits = 0
        self.requests = 0
        self._finished = False
        self._copying: set[int] = set()  # copied into the cache by a plan, not yet told to it as landed

    # ---- one layer step -------------------------------------------------------------
    def layer(self, ls: int) -> list[Work]:
        """Plan layer step ``ls``, start its copies, and return its experts in compute order."""
        start = now()
        works = self._layer(ls)
        stat = self._pass
        if stat is not None:
            stat.plan_s += now() - start
            stat.layer_steps += 1
        return works

    def _layer(self, ls: int) -> list[Work]:
        pool = self.pool
        pool.begin_layer()
        stat = self._pass
        plan = self.planner.plan(ls)
        copying = self._copying
        for obj in plan.evicted:
            pool.release(obj)
            copying.discard(obj)
        works: list[Work] = []
        late = 0
        for obj, tokens in plan.hits:
            slot = pool.slot_of[obj]
            if not pool.landed(slot):
                late += 1
            works.append(Work(obj, tokens, slot))
        loads = []
        for obj, tokens, cached in plan.misses:
            slot = pool.assign(obj) if cached else pool.take_bypass()
            loads.append((obj, slot, self.demand_form))
            works.append(Work(obj, tokens, slot))
        for obj, tokens in plan.cpu:
            works.append(Work(obj, tokens, -1))
        for obj in plan.admits:  # computed on the host now, copied in for later layer steps
            loads.append((obj, pool.assign(obj), self.demand_form))
        for obj in plan.prefetches:
            loads.append((obj, pool.assign(obj), self.prefetch_form))
        pool.load_many(loads)  # demand misses, admissions, then prefetches, in one visit to the copy stream
        self.late_hits += late
        self.requests += len(works)
        if stat is not None:
            stat.hits += len(plan.hits) - late
            stat.late_hits += late
            stat.misses += len(plan.misses) + len(plan.cpu)
            stat.prefetches += len(plan.prefetches)
        if self.record:
            self.decisions.append(Decision(ls, [o for o, _ in plan.hits],
                                           [(o, c) for o, _, c in plan.misses] + [(o, False) for o, _ in plan.cpu],
                                           list(plan.prefetches), list(plan.evicted), list(plan.admits)))
        into_cache = [obj for obj, _, cached in plan.misses if cached] + plan.admits + plan.prefetches
        if not self.device.cuda:  # copies on the CPU are synchronous: they have landed
            landed = self.cache.landed
            for obj in into_cache:
                landed(obj)
        else:  # told to the cache once the pass ends and the copy is seen to have landed
            copying.update(into_cache)
        return works

    def weights(self, work: Work) -> dict[str, torch.Tensor]:
        """The expert's weights, with the compute stream ordered after their copy."""
        if work.slot < 0:
            return self.spec.views(self.store.full[work.obj])
        buffer = self.pool.acquire(work.slot, self._stall_events)
        views = self._views.get(work.slot)
        if views is None or views["__buffer__"] is not buffer:  # a bypass buffer made since
            views = self._slot_views(work.slot)
        return views

    def _slot_views(self, slot: int) -> dict[str, torch.Tensor]:
        buffer = self.pool.buffers[slot]
        views = dict(self.spec.views(buffer))
        views["__buffer__"] = buffer
        self._views[slot] = views
        return views

    def compute(self, work: Work, x: torch.Tensor) -> torch.Tensor:
        """Apply the expert to ``x``; host-resident experts (cpu_compute) run on the host."""
        if work.slot < 0:
            y = self.spec.compute(x.to("cpu"), self.spec.views(self.store.full[work.obj]))
            return y.to(x.device)
        y = self.spec.compute(x, self.weights(work))
        if not self.resident:  # resident slots are never overwritten: no reader to track
            self.pool.release_use(work.slot)
        return y

    # ---- passes ----------------------------------------------------------------------
    def begin_pass(self, pass_index: int, decode: bool, tokens: int) -> None:
        self._pass = StepStat(pass_index, decode, tokens, 0.0, 0.0)
        self._stall_events = []
        self._copy_start = self.pool.copy_seconds
        self._pass_start = now()

    def end_pass(self) -> StepStat:
        self.device.sync_compute()
        stat = self._pass
        stat.latency_s = now() - self._pass_start
        if self.device.cuda:
            stat.stall_s = sum(a.elapsed_time(b) for a, b in self._stall_events) / 1e3
            landed = [obj for obj in self._copying if self.pool.landed(self.pool.slot_of[obj])]
            for obj in sorted(landed):
                self.cache.landed(obj)
                self._copying.discard(obj)
        else:
            stat.stall_s = self.pool.copy_seconds - self._copy_start
        self.steps.append(stat)
        self._pass = None
        return stat

    # ---- results -------------------------------------------------------------------------
    def run_summary(self) -> RunSummary:
        """The figures shared with the simulator, measured (settles the cache's counts first)."""
        if not self._finished:
            self.cache.finish()
            self._finished = True
        return RunSummary.of_run(
            self.steps, self.cache.counts, requests=self.requests, late_hits=self.late_hits,
            capacity=self.pool.n_slots, bytes_moved=self.pool.bytes_moved,
            total_s=float(sum(s.latency_s for s in self.steps)), stall_s=float(sum(s.stall_s for s in self.steps)))

    def summary(self) -> dict:
        """The run's figures under the simulator's keys for the same quantities."""
        decode = [s for s in self.steps if s.decode] or self.steps
        return {
            "device": self.device.description(),
            **self.run_summary().to_dict(),
            # host time per decode step by phase of the run loop, and the work counted in it
            **{f"host_{name}_per_step" if name.endswith("_s") else f"{name}_per_step":
               float(np.mean([getattr(s, name) for s in decode])) if decode else 0.0 for name in PHASES},
            "peak_gpu_bytes_experts": int((self.pool.n_slots + len(self.pool.bypass)) * self.pool.numel
                                          * self.pool.dtype.itemsize),
        }

    def phase_totals(self) -> dict[str, float]:
        """Each phase field of :class:`StepStat` summed over every pass, with the copies issued."""
        totals = {name: sum(getattr(s, name) for s in self.steps) for name in PHASES}
        totals["copies"] = self.pool.copies
        return totals

    def close(self) -> None:
        """Give the device slots back now (the figures stay readable): a validation that makes
        many runtimes would otherwise keep their slots until the garbage collector runs."""
        self.summary()  # settle the counts while the cache is intact
        self.pool.close()
        self._views = {}

    def step_latencies(self, decode_only: bool = True) -> list[float]:
        steps = [s for s in self.steps if s.decode] if decode_only else self.steps
        return [s.latency_s for s in (steps or self.steps)]


def trace_planner_factory(stream):
    """Planner over a trace's request stream (the simulator's own class)."""

    def factory(cache, spec, **kw):
        return Planner(stream, cache, spec, **kw)

    factory.stream = stream  # what the cache's pinned experts and the cost numbers are computed on
    return factory
