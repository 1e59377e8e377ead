"""The Python API: ``simulate(trace, settings) -> Result`` and ``replay(...)`` for counts only.

Every timed result comes with its two bounds, run on the same trace, hardware
and cache size:

* **all-resident**: every expert on the GPU, no copies (infinite GPU memory);
* **oracle**: perfect prediction (``oracle`` speculation) with Belady eviction.
  Belady's MIN minimises the total number of fetches of a demand-paged cache;
  with prefetching it is not the policy that minimises demand misses (that is
  Jain & Lin's Demand-MIN, which may fetch more in total to stall less), so the
  oracle bound is a strong reference point, not a proof of optimal latency.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pregate.simulator.cache import ExpertCache
from pregate.simulator.costs import build_costs
from pregate.simulator.engine import StepRecord, TimedOutcome, run_timed
from pregate.simulator.errors import SimulatorError
from pregate.simulator.planner import Planner
from pregate.simulator.policies import BUFFERING, CACHING, COMPRESSION, SPECULATION
from pregate.simulator.memory_fit import working_margin
from pregate.simulator.pricing import meta_label, price_stream
from pregate.simulator.profile import HardwareProfile, load_profile
from pregate.simulator.runtime import RuntimeProfile, load_runtime
from pregate.simulator.replay import FAST_POLICIES, ReplayCounts, replay_fast, replay_general
from pregate.simulator.settings import Settings, parse_cache_size
from pregate.simulator.stream import RequestStream, build_stream
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
        if stream is None:
            stream = build_stream(_open(trace), batch_size=settings.batch_size)
        # the routing stays the trace's; sizes come from the model it is priced as
        stream = price_stream(stream, settings.price_as)
        self.stream = stream
        self.profile = profile or load_profile(settings.profile)
        self.runtime = runtime or load_runtime(settings.runtime, self.profile)
        self.costs = build_costs(stream, self.profile, self.runtime, settings.dtype, settings.host_tier)
        self.gpu_dtype = self.costs.gpu_dtype
        self.expert_bytes = self.costs.expert_bytes[self.gpu_dtype]

    def capacity(self, settings: Settings) -> int:
        total = self.stream.layout.n_objects
        requested = parse_cache_size(settings.cache, total, self.expert_bytes)
        return BUFFERING.get(settings.buffering)().capacity(requested, total, self.stream.max_needed())

    def _parts(self, settings: Settings):
        spec_cls, cache_cls, buf_cls, comp_cls = resolve_policies(settings)
        layout = self.stream.layout
        buffering = buf_cls()
        cache = ExpertCache(layout, self.capacity(settings), lambda: cache_cls(layout=layout, seed=settings.seed),
                            per_layer=settings.per_layer)
        spec = spec_cls(layout=layout, seed=settings.seed)
        planner = Planner(self.stream, cache, spec, cpu_misses=buffering.cpu_misses,
                          max_prefetch=settings.max_prefetch, future_for_cache=cache_cls.needs_future)
        comp = comp_cls()
        return cache, planner, buffering, comp

    def replay(self, settings: Settings | None = None, fast: bool = True) -> ReplayCounts:
        settings = settings or self.settings
        spec_cls, cache_cls, buf_cls, comp_cls = resolve_policies(settings)
        demand_bytes = self.costs.expert_bytes[comp_cls().demand_dtype(self.gpu_dtype)]
        if buf_cls.all_resident:
            n = self.stream.n_requests
            return ReplayCounts(n, n, 0, 0, 0, 0, 0, 0, self.stream.layout.n_objects, 0)
        if (fast and settings.speculation == "none" and settings.cache_policy in FAST_POLICIES
                and not settings.per_layer and not buf_cls.cpu_misses):
            return replay_fast(self.stream, settings.cache_policy, self.capacity(settings), demand_bytes)
        cache, planner, buffering, comp = self._parts(settings)
        prefetch_bytes = self.costs.expert_bytes[comp.prefetch_dtype(self.gpu_dtype)]
        if buffering.cpu_misses:
            demand_bytes = 0
        return replay_general(self.stream, cache, planner, demand_bytes, prefetch_bytes)

    def timed(self, settings: Settings | None = None, timeline: bool = False) -> tuple[TimedOutcome, ExpertCache]:
        settings = settings or self.settings
        cache, planner, buffering, comp = self._parts(settings)
        engines = settings.copy_engines or int(self.profile["pcie.copy_engines"])
        outcome = run_timed(
            self.stream, self.costs.for_policy(settings.cache_policy), planner, cache,
            demand_dtype=comp.demand_dtype(self.gpu_dtype), prefetch_dtype=comp.prefetch_dtype(self.gpu_dtype),
            copy_engines=engines, timeline=timeline, all_resident=buffering.all_resident,
        )
        if not buffering.all_resident:
            cache.finish()
        return outcome, cache

    def run(self, settings: Settings | None = None, timeline: bool = False, bounds: bool = True) -> Result:
        settings = settings or self.settings
        outcome, cache = self.timed(settings, timeline=timeline)
        summary = self.summarise(settings, outcome, cache)
        if bounds:
            resident, oracle = bound_settings(settings)
            add_bounds(summary, _mean_step(self.timed(resident)[0]), _mean_step(self.timed(oracle)[0]))
        if settings.uncertainty:
            from pregate.simulator.uncertainty import band

            summary.update(band(self, settings, settings.uncertainty, settings.seed))
        return Result(settings=settings.to_dict(), summary=summary, steps=outcome.steps, events=outcome.events)

    def summarise(self, settings: Settings, outcome: TimedOutcome, cache: ExpertCache) -> dict:
        stream = self.stream
        steps = outcome.steps
        decode = [s for s in steps if s.decode] or steps
        lat = np.array([s.latency_s for s in decode]) if decode else np.zeros(1)
        tokens = int(sum(s.tokens for s in decode))
        decode_time = float(lat.sum())
        all_resident = BUFFERING.get(settings.buffering).all_resident
        c = cache.counts
        total_hits = stream.n_requests if all_resident else c.hits
        slots = stream.layout.n_objects if all_resident else c.peak_slots + (1 if c.bypasses else 0)
        peak_bytes = self.costs.dense_bytes + slots * self.expert_bytes
        prefetches = 0 if all_resident else c.prefetches
        memory = float(self.profile["gpu.memory"])
        margin = working_margin(memory)
        extra = stream.meta.extra if isinstance(stream.meta.extra, dict) else {}
        return {
            "trace_model": stream.meta.model_id,
            "priced_as": extra.get("priced_as") or stream.meta.model_id,
            "pricing": meta_label(stream.meta),
            "gpu_dtype": self.gpu_dtype,
            "profile": self.profile.name,
            "runtime": self.runtime.name,
            "requests": stream.n_requests,
            "tokens": tokens,
            "steps": len(decode),
            "prefill_passes": sum(1 for s in steps if not s.decode),
            "cache_capacity_experts": stream.layout.n_objects if all_resident else cache.capacity,
            "hits": total_hits - outcome.late_hits,
            "late_hits": outcome.late_hits,
            "misses": 0 if all_resident else c.misses,
            "bypasses": 0 if all_resident else c.bypasses,
            "prefetches": prefetches,
            "prefetch_hits": 0 if all_resident else c.prefetch_hits,
            "wasted_prefetches": 0 if all_resident else c.wasted_prefetches,
            "prefetch_precision": (c.prefetch_hits / prefetches) if prefetches else None,
            "evictions": 0 if all_resident else c.evictions,
            "cancelled_copies": outcome.cancelled_copies,
            "bytes_moved": outcome.bytes_moved,
            "wasted_bytes": int(c.wasted_prefetches * self.costs.expert_bytes[
                COMPRESSION.get(settings.compression)().prefetch_dtype(self.gpu_dtype)]) if not all_resident else 0,
            "total_s": outcome.total_s,
            "decode_s": decode_time,
            "mean_step_latency_s": float(lat.mean()),
            "p50_step_latency_s": float(np.percentile(lat, 50)),
            "p95_step_latency_s": float(np.percentile(lat, 95)),
            "tokens_per_s": tokens / decode_time if decode_time > 0 else None,
            "compute_s": outcome.compute_s,
            "stall_s": outcome.stall_s,
            "dispatch_s": outcome.dispatch_s,
            "stall_share": outcome.stall_s / outcome.total_s if outcome.total_s else 0.0,
            "peak_gpu_bytes": int(peak_bytes),
            "gpu_memory_bytes": int(memory),
            "working_margin_bytes": int(margin),
            # dense weights + expert cache + working margin (CUDA context, activations, KV cache)
            "over_memory": bool(peak_bytes + margin > memory),
            "fits_gpu_memory": bool(peak_bytes + margin <= memory),
            "expert_table": self.costs.used_table or None,
            "dense_table": self.costs.used_dense_table or None,
        }


def bound_settings(settings: Settings) -> tuple[Settings, Settings]:
    """The settings of the two bound runs of ``settings``: all-resident, and oracle prefetch + Belady.

    The all-resident run never touches the cache, the planner or a copy, so
    every setting that only affects those is normalised away: points that
    differ only there share one bound run (the sweep memoises on this).
    """
    resident = settings.replace(buffering="resident", speculation="none", cache_policy="lru", cache="100%",
                                per_layer=False, compression="none", max_prefetch=0, copy_engines=0, seed=0,
                                uncertainty="")
    oracle = settings.replace(speculation="oracle", cache_policy="belady", uncertainty="",
                              buffering="cache" if settings.buffering != "resident" else "resident")
    return resident, oracle


def add_bounds(summary: dict, resident_mean: float, oracle_mean: float) -> dict:
    """Add both bounds' mean step latency and the result's ratio to each to ``summary``."""
    mean = summary["mean_step_latency_s"]
    summary.update(
        bound_resident_mean_step_latency_s=resident_mean,
        bound_oracle_mean_step_latency_s=oracle_mean,
        ratio_to_resident=mean / resident_mean if resident_mean else None,
        ratio_to_oracle=mean / oracle_mean if oracle_mean else None,
    )
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
