"""The Python API: ``simulate(trace, settings) -> Result`` and ``replay(...)`` for counts only.

Every timed result comes with two reference runs and one bound, on the same
trace, hardware and cache size:

* **all-resident**: every expert on the GPU, no copies (infinite GPU memory);
* **perfect-prediction reference** (JSON keys ``bound_oracle_*``,
  ``ratio_to_oracle``, kept for compatibility): ``oracle`` speculation with
  Belady eviction. Belady's MIN minimises the total number of fetches of a
  demand-paged cache; with prefetching it is not the policy that minimises
  demand misses (that is Jain & Lin's Demand-MIN, which may fetch more in total
  to stall less), and it ignores the link's timing, so online policies can
  beat it: a reference point, not a bound;
* **lower bound** (``bound_lower_mean_step_latency_s``, ``ratio_to_lower_bound``):
  proven in :mod:`pregate.simulator.lower_bound`; no policy beats it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pregate.simulator.assemble import make_cache, planner_options
from pregate.simulator.cache import ExpertCache
from pregate.simulator.costs import build_costs
from pregate.simulator.engine import StepRecord, TimedOutcome, run_timed
from pregate.simulator.errors import SimulatorError
from pregate.simulator.gate import PrefetchTiming, timing_from_costs
from pregate.simulator.lower_bound import mean_step_lower_bound
from pregate.simulator.planner import Planner
from pregate.simulator.policies import BUFFERING, CACHING, COMPRESSION, SPECULATION
from pregate.simulator.memory_fit import working_margin
from pregate.simulator.policies.build import make_speculation
from pregate.simulator.policies.placement import SideTiming, side_timing
from pregate.simulator.pricing import meta_label, price_stream, require_expert_size
from pregate.simulator.hosts import with_host
from pregate.simulator.profile import HardwareProfile, load_profile
from pregate.simulator.runtime import RuntimeProfile, load_runtime
from pregate.simulator.replay import ReplayCounts, replay_fast, replay_general
from pregate.simulator.settings import Settings, check_per_layer, parse_cache_size
from pregate.simulator.stream import RequestStream, build_stream
from pregate.simulator.summary import RunSummary
from pregate.traces import Trace, open_trace


@dataclass
class Result:
    """One simulated setting: counts, latencies, bounds, per-step breakdown."""

    settings: dict
    summary: dict
    steps: list[StepRecord] = field(default_factory=list)
    events: list = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({**self.summary, "settings": self.settings}, indent=2, sort_keys=True)

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    def write_steps(self, path: str | Path) -> None:
        """Per forward pass: latency and its breakdown (compute, transfer stall, dispatch)."""
        import polars as pl

        rows = [asdict(s) for s in self.steps]
        frame = pl.DataFrame(rows) if rows else pl.DataFrame()
        frame.write_parquet(path)

    def write_timeline(self, path: str | Path) -> None:
        """Chrome / Perfetto trace-event JSON: one track per resource, times in microseconds."""
        tracks = sorted({track for _, track, _, _ in self.events})
        tid = {t: i for i, t in enumerate(tracks)}
        out = [{"name": "thread_name", "ph": "M", "pid": 0, "tid": tid[t], "args": {"name": t}} for t in tracks]
        out += [
            {"name": name, "ph": "X", "pid": 0, "tid": tid[track], "ts": round(start * 1e6, 3), "dur": round(dur * 1e6, 3)}
            for name, track, start, dur in self.events
        ]
        Path(path).write_text(json.dumps({"traceEvents": out, "displayTimeUnit": "ms"}))


def _open(trace) -> Trace:
    return trace if isinstance(trace, Trace) else open_trace(trace)


def resolve_policies(settings: Settings):
    """Look up every policy name first, so a typo fails before any work."""
    return (SPECULATION.get(settings.speculation), CACHING.get(settings.cache_policy),
            BUFFERING.get(settings.buffering), COMPRESSION.get(settings.compression))


class Simulation:
    """A trace prepared once (stream, costs) for many settings that share batch size and hardware."""

    def __init__(self, trace, settings: Settings, profile: HardwareProfile | None = None,
                 stream: RequestStream | None = None, runtime: RuntimeProfile | None = None):
        self.settings = settings
        resolve_policies(settings)
        from pregate.simulator.uncertainty import parse_mode

        parse_mode(settings.uncertainty)
        if settings.copy_engines < 0 or settings.max_prefetch < 0:
            raise SimulatorError("--copy-engines and --max-prefetch must not be negative")
        if settings.prefetch_gate not in ("cost", "off"):
            raise SimulatorError(f"--prefetch-gate '{settings.prefetch_gate}' is not one of cost, off")
        if stream is None:
            stream = build_stream(_open(trace), batch_size=settings.batch_size)
        # the routing stays the trace's; sizes come from the model it is priced as
        stream = price_stream(stream, settings.price_as)
        self.stream = stream
        self.source = trace  # the trace itself (a path or Trace), for policies that train on it
        self.speculation_note = None
        self.placement_note = None
        require_expert_size(stream.meta)
        self.profile = with_host(profile or load_profile(settings.profile), settings.host)
        self.runtime = runtime or load_runtime(settings.runtime, self.profile)
        self.costs = build_costs(stream, self.profile, self.runtime, settings.dtype, settings.host_tier)
        self.gpu_dtype = self.costs.gpu_dtype
        self.expert_bytes = self.costs.expert_bytes[self.gpu_dtype]

    def capacity(self, settings: Settings) -> int:
        total = self.stream.layout.n_objects
        requested = parse_cache_size(settings.cache, total, self.expert_bytes)
        capacity = BUFFERING.get(settings.buffering)().capacity(requested, total, self.stream.max_needed())
        check_per_layer(capacity, self.stream.layout.n_layers, settings.per_layer, settings.cache)
        return capacity

    def _parts(self, settings: Settings):
        spec_cls, cache_cls, buf_cls, comp_cls = resolve_policies(settings)
        layout = self.stream.layout
        cache, buffering = make_cache(layout, self.capacity(settings), settings, self.stream)
        self.placement_note = buffering.note or None
        spec = make_speculation(spec_cls, layout, settings, self.source)
        self.speculation_note = getattr(spec, "note", "") or None
        comp = comp_cls()
        planner = Planner(self.stream, cache, spec, **planner_options(settings, buffering),
                          timing=self.prefetch_timing(settings), reset_per_group=settings.reset_cache_per_sequence,
                          sides=self.side_timing(settings))
        return cache, planner, buffering, comp

    @staticmethod
    def _policy_pair(settings: Settings) -> tuple[str, str, bool]:
        """What prices the planner (``CostTables.for_policy``): caching, speculation, every expert resident."""
        return settings.cache_policy, settings.speculation, BUFFERING.get(settings.buffering).all_resident

    def lower_bound(self, settings: Settings | None = None) -> float:
        """The provable lower bound on ``settings``' mean step latency (see :mod:`lower_bound`)."""
        settings = settings or self.settings
        buf = BUFFERING.get(settings.buffering)
        comp = COMPRESSION.get(settings.compression)()
        engines = settings.copy_engines or int(self.profile["pcie.copy_engines"])
        copy_s = min(self.costs.copy[comp.demand_dtype(self.gpu_dtype)], self.costs.copy[comp.prefetch_dtype(self.gpu_dtype)])
        return mean_step_lower_bound(self.stream, self.costs, capacity=self.capacity(settings), copy_s=copy_s,
                                     engines=engines, copies_on_miss=not (buf.all_resident or buf.cpu_misses),
                                     starts_empty=not buf.all_resident, gpu_experts=not buf.cpu_misses)

    def prefetch_timing(self, settings: Settings) -> PrefetchTiming | None:
        """The cost gate's inputs for ``settings`` (None when the gate is off)."""
        if settings.prefetch_gate != "cost":
            return None
        comp = COMPRESSION.get(settings.compression)()
        engines = settings.copy_engines or int(self.profile["pcie.copy_engines"])
        costs = self.costs.for_policy(*self._policy_pair(settings))
        return timing_from_costs(self.stream, costs, engines,
                                 comp.demand_dtype(self.gpu_dtype),
                                 comp.prefetch_dtype(self.gpu_dtype))

    def side_timing(self, settings: Settings) -> SideTiming | None:
        """The cpu-or-fetch choice's inputs for ``settings`` (None when the buffering makes no choice)."""
        if not BUFFERING.get(settings.buffering).chooses_side:
            return None
        comp = COMPRESSION.get(settings.compression)()
        engines = settings.copy_engines or int(self.profile["pcie.copy_engines"])
        demand = comp.demand_dtype(self.gpu_dtype)
        costs = self.costs.for_policy(*self._policy_pair(settings))
        return side_timing(self.stream, costs, engines, demand)

    def replay(self, settings: Settings | None = None, fast: bool = True) -> ReplayCounts:
        settings = settings or self.settings
        spec_cls, cache_cls, buf_cls, comp_cls = resolve_policies(settings)
        demand_bytes = self.costs.expert_bytes[comp_cls().demand_dtype(self.gpu_dtype)]
        loop = cache_cls.fast_replay  # the caching policy names its specialised loop, if it has one
        if (fast and loop and settings.speculation == "none" and not settings.policy_args
                and not settings.per_layer and not buf_cls.cpu_misses and not settings.reset_cache_per_sequence):
            return replay_fast(self.stream, loop, self.capacity(settings), demand_bytes)
        cache, planner, buffering, comp = self._parts(settings)
        prefetch_bytes = self.costs.expert_bytes[comp.prefetch_dtype(self.gpu_dtype)]
        return replay_general(self.stream, cache, planner, demand_bytes, prefetch_bytes)

    def timed(self, settings: Settings | None = None, timeline: bool = False) -> tuple[TimedOutcome, ExpertCache]:
        settings = settings or self.settings
        cache, planner, buffering, comp = self._parts(settings)
        engines = settings.copy_engines or int(self.profile["pcie.copy_engines"])
        outcome = run_timed(
            self.stream, self.costs.for_policy(*self._policy_pair(settings)), planner, cache,
            demand_dtype=comp.demand_dtype(self.gpu_dtype), prefetch_dtype=comp.prefetch_dtype(self.gpu_dtype),
            copy_engines=engines, timeline=timeline, all_resident=buffering.all_resident,
        )
        cache.finish()
        return outcome, cache

    def run(self, settings: Settings | None = None, timeline: bool = False, bounds: bool = True) -> Result:
        settings = settings or self.settings
        outcome, cache = self.timed(settings, timeline=timeline)
        summary = self.summarise(settings, outcome, cache)
        if bounds:
            resident, oracle = bound_settings(settings)
            add_bounds(summary, _mean_step(self.timed(resident)[0]), _mean_step(self.timed(oracle)[0]),
                       self.lower_bound(settings))
        if settings.uncertainty:
            from pregate.simulator.uncertainty import band

            summary.update(band(self, settings, settings.uncertainty, settings.seed))
        return Result(settings=settings.to_dict(), summary=summary, steps=outcome.steps, events=outcome.events)

    def summarise(self, settings: Settings, outcome: TimedOutcome, cache: ExpertCache) -> dict:
        stream = self.stream
        steps = outcome.steps
        c = cache.counts
        run = RunSummary.of_run(
            steps, c, requests=stream.n_requests, late_hits=outcome.late_hits,
            capacity=cache.capacity, bytes_moved=outcome.bytes_moved,
            total_s=outcome.total_s, stall_s=outcome.stall_s)
        slots = c.peak_slots + (1 if c.bypasses else 0)
        peak_bytes = self.costs.dense_bytes + slots * self.expert_bytes
        memory = float(self.profile["gpu.memory"])
        margin = working_margin(memory)
        extra = stream.meta.extra if isinstance(stream.meta.extra, dict) else {}
        prefetch_bytes = self.costs.expert_bytes[COMPRESSION.get(settings.compression)().prefetch_dtype(self.gpu_dtype)]
        return {
            "trace_model": stream.meta.model_id,
            "priced_as": extra.get("priced_as") or stream.meta.model_id,
            "pricing": meta_label(stream.meta),
            "gpu_dtype": self.gpu_dtype,
            "profile": self.profile.name,
            "host": self.profile.host_name,
            "runtime": self.runtime.name,
            # the shared figures, with the simulator's own among them where they always stood
            # (a sweep's stored columns keep their order, so old results still concatenate)
            **run.to_dict(until="wasted_prefetches"),
            "prefetch_precision": run.prefetch_precision,
            "evictions": run.evictions,
            "cancelled_copies": outcome.cancelled_copies,
            "bytes_moved": run.bytes_moved,
            "wasted_bytes": int(run.wasted_prefetches * prefetch_bytes),
            **run.to_dict(after="bytes_moved", until="tokens_per_s"),
            "compute_s": outcome.compute_s,
            "stall_s": run.stall_s,
            "dispatch_s": outcome.dispatch_s,
            "stall_share": run.stall_share,
            "peak_gpu_bytes": int(peak_bytes),
            "gpu_memory_bytes": int(memory),
            "working_margin_bytes": int(margin),
            # dense weights + expert cache + working margin (CUDA context, activations, KV cache)
            "over_memory": bool(peak_bytes + margin > memory),
            "fits_gpu_memory": bool(peak_bytes + margin <= memory),
            "expert_table": self.costs.used_table or None,
            "dense_table": self.costs.used_dense_table or None,
            "speculation_note": self.speculation_note,
            **({"planner_cost": planner_used}
               if (planner_used := self.costs.planner_note(*self._policy_pair(settings))) else {}),
            **({"placement_note": self.placement_note} if self.placement_note else {}),
            **self._phase_summary(settings, steps),
        }

    def _phase_summary(self, settings: Settings, steps: list[StepRecord]) -> dict:
        """Counts and times per phase, ``decode_*`` and ``prefill_*``: the totals above mix both.

        Why: tokens/s, step latencies and the bound ratios are decode-only, and
        a few prefill passes can hold most of the stall; a decode headline next
        to an all-passes stall share misleads. ``*_hits`` are on time,
        ``*_late_hits`` were in flight when needed, never mixed.
        ``*_bytes_issued`` are the copies issued in that phase (derived: demand
        misses x demand size + prefetches x prefetch size; a prefetch cancelled
        later counts, so the two phases may add up to more than ``bytes_moved``). A buffering that
        copies some of its CPU-run misses (``cpu_compute``, ``cpu-or-fetch``) mixes copied and CPU-run
        misses in a step's count, so its ``*_bytes_issued`` is None (``bytes_moved`` is exact).
        """
        comp = COMPRESSION.get(settings.compression)()
        buffering = BUFFERING.get(settings.buffering)
        mixed = buffering.admit_cpu_misses or buffering.chooses_side
        demand = 0 if buffering.cpu_misses else self.costs.expert_bytes[comp.demand_dtype(self.gpu_dtype)]
        prefetch = self.costs.expert_bytes[comp.prefetch_dtype(self.gpu_dtype)]
        out: dict = {}
        for phase, decode in (("decode", True), ("prefill", False)):
            part = [s for s in steps if s.decode == decode]
            hits, late, misses = (sum(getattr(s, k) for s in part) for k in ("hits", "late_hits", "misses"))
            prefetches = sum(s.prefetches for s in part)
            requests = hits + late + misses
            time_s, stall = sum(s.latency_s for s in part), sum(s.stall_s for s in part)
            out.update({
                f"{phase}_passes": len(part), f"{phase}_requests": requests, f"{phase}_hits": hits,
                f"{phase}_late_hits": late, f"{phase}_misses": misses, f"{phase}_prefetches": prefetches,
                f"{phase}_hit_rate": hits / requests if requests else None,
                f"{phase}_late_hit_rate": late / requests if requests else None,
                f"{phase}_bytes_issued": None if mixed else int(misses * demand + prefetches * prefetch),
                f"{phase}_time_s": time_s, f"{phase}_stall_s": stall,
                f"{phase}_compute_s": sum(s.compute_s for s in part),
                f"{phase}_dispatch_s": sum(s.dispatch_s for s in part),
                f"{phase}_stall_share": stall / time_s if time_s else 0.0,
            })
        return out


def prefetch_timing(stream: RequestStream, settings: Settings, profile: HardwareProfile | None = None):
    """The cost gate's inputs for a planner over ``stream`` (the executor on a trace uses the same)."""
    return Simulation(None, settings, profile=profile, stream=stream).prefetch_timing(settings)


def side_timing_for(stream: RequestStream, settings: Settings, profile: HardwareProfile | None = None):
    """The cpu-or-fetch choice's inputs for a planner over ``stream`` (the executor on a trace uses the same)."""
    return Simulation(None, settings, profile=profile, stream=stream).side_timing(settings)


def bound_settings(settings: Settings) -> tuple[Settings, Settings]:
    """The settings of the two reference runs of ``settings``: all-resident, and the
    perfect-prediction reference (oracle prefetch + Belady, ungated: the reference does
    not move with the gate setting).

    The all-resident run never touches the cache, the planner or a copy, so
    every setting that only affects those is normalised away: points that
    differ only there share one bound run (the sweep memoises on this).
    """
    resident = settings.replace(buffering="resident", speculation="none", cache_policy="lru", cache="100%",
                                per_layer=False, compression="none", max_prefetch=0, copy_engines=0, seed=0,
                                uncertainty="", policy_args=())
    oracle = settings.replace(speculation="oracle", cache_policy="belady", prefetch_gate="off", uncertainty="",
                              policy_args=(),
                              buffering="cache" if settings.buffering != "resident" else "resident")
    return resident, oracle


def add_bounds(summary: dict, resident_mean: float, oracle_mean: float, lower_mean: float | None = None) -> dict:
    """Add the references' and the lower bound's mean step latency, and the result's ratio to each."""
    mean = summary["mean_step_latency_s"]
    summary.update(
        bound_resident_mean_step_latency_s=resident_mean,
        bound_oracle_mean_step_latency_s=oracle_mean,
        ratio_to_resident=mean / resident_mean if resident_mean else None,
        ratio_to_oracle=mean / oracle_mean if oracle_mean else None,
    )
    if lower_mean is not None:
        summary.update(bound_lower_mean_step_latency_s=lower_mean,
                       ratio_to_lower_bound=mean / lower_mean if lower_mean else None)
    return summary


def add_total_bounds(sim: Simulation, settings: Settings, summary: dict) -> dict:
    """All passes instead of decode steps: both bounds' total time and the result's ratio to each.

    Kept apart from :meth:`Simulation.run` (two more bound runs' worth of
    keys) so that a sweep row stays exactly a ``simulate`` summary; ``simulate
    --phase all`` adds them.
    """
    resident, oracle = bound_settings(settings)
    r_total, o_total = sim.timed(resident)[0].total_s, sim.timed(oracle)[0].total_s
    total = summary["total_s"]
    summary.update(bound_resident_total_s=r_total, bound_oracle_total_s=o_total,
                   ratio_to_resident_all=total / r_total if r_total else None,
                   ratio_to_oracle_all=total / o_total if o_total else None)
    return summary


def _mean_step(outcome: TimedOutcome) -> float:
    steps = [s for s in outcome.steps if s.decode] or outcome.steps
    return float(np.mean([s.latency_s for s in steps])) if steps else 0.0


def simulate(trace, settings: Settings | None = None, *, timeline: bool = False, bounds: bool = True) -> Result:
    """Simulate one setting on a trace (a path or an opened Trace), with both bounds."""
    settings = settings or Settings()
    return Simulation(trace, settings).run(timeline=timeline, bounds=bounds)


def replay(trace, settings: Settings | None = None, fast: bool = True) -> ReplayCounts:
    """Counts only, no timing: the fast path for ranking many settings."""
    settings = settings or Settings()
    return Simulation(trace, settings).replay(fast=fast)
