"""``pregate validate``: the executor and the simulator on the same traces, point by point.

For every trace, batch size, speculation + caching pair and cache size, the
trace-driven synthetic model runs on the device (measured) and the SimPy
timed run prices the same request stream with the given profile (simulated).
Both use the same planner, cache mechanism and policy objects, so their hit
and miss counts agree (``counts_agree``: the replay's hits = measured hits +
late hits); what is compared is time.

Per point: mean, P50 and P95 decode-step latency, measured and simulated,
their relative errors ``(simulated - measured) / measured``, and the two-sample
KS statistic between the per-step latency distributions. Overall: the median
and P95 of the absolute relative error of the mean, and Kendall's tau between
the rankings of the points by measured and by simulated mean latency. Each
batch size also gets an all-resident run (the executor with every expert on
the device), and the best offloaded point's ratio to it.

Measured time on a shared machine only ever grows with noise: on one GPU host,
the same setting measured in two fresh runs differed by 8% at the median and
30-80% at the P95. So ``repeats`` rounds run every setting of every trace
and batch size in turn, so that one point's rounds lie minutes apart; each
point keeps its fastest round's figures, and its
latency statistics come from each step's least time over the rounds
(:func:`fastest_steps`; all rounds' means are in ``measured_mean_s_rounds``).

On the CPU device the timings read the host thread's CPU time by default
(``executor.device.step_clock``): with one torch thread that thread does all
the work, and the wall clock would add the time other processes held the core.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from pregate.executor.device import CLOCK_WHAT, ExecutorError, clock_name, load_average
from pregate.executor.run import TraceExecutor, check_fits
from pregate.executor.stats import fastest_steps, kendall_tau, ks_statistic, latency_stats
from pregate.simulator.api import Simulation
from pregate.simulator.errors import SimulatorError
from pregate.simulator.policies import BUFFERING, CACHING, SPECULATION
from pregate.simulator.policies.params import resolve, split_assignment
from pregate.simulator.profile import load_profile
from pregate.simulator.runtime import load_runtime
from pregate.simulator.settings import Settings
from pregate.simulator.summary import RunSummary

DEFAULT_POLICIES = ["none+lru", "layer_minus_1+lru", "none+lfu", "multi_layer+least-stale"]
QUICK_POLICIES = ["none+lru", "layer_minus_1+lru"]
# CPU-or-GPU placements, each run once per cache size with no speculation and lru (static ones use neither)
DEFAULT_PLACEMENTS = ["cpu_compute", "static-layers", "static-hot", "cpu-or-fetch"]
NO_AHEAD_FALLBACK = {"layer_minus_1": "transition", "multi_layer": "eam", "adaptive": "transition"}


def parse_placements(text: str | list[str] | None, quick: bool) -> list[str]:
    """Buffering schemes validated besides the cache: the default list, none with --quick or 'none'."""
    if text is None:
        return [] if quick else list(DEFAULT_PLACEMENTS)
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if items == ["none"]:
        return []
    for name in items:
        BUFFERING.get(name)
        if name in ("cache", "resident"):
            raise ExecutorError(f"--placements names buffering schemes besides the cache and the all-resident run, "
                                f"which are always validated; drop '{name}'")
    return list(dict.fromkeys(items))


def parse_policies(text: str | list[str]) -> list[tuple[str, str]]:
    items = text.split(",") if isinstance(text, str) else text
    out = []
    for item in items:
        if "+" not in item:
            raise ExecutorError(f"policy pair '{item}' is not SPECULATION+CACHING (e.g. layer_minus_1+lru)")
        spec, cache = item.strip().split("+", 1)
        SPECULATION.get(spec)
        CACHING.get(cache)
        out.append((spec, cache))
    return out


def resolve_pair_args(policy_args, pairs) -> tuple:
    """``"NAME=VALUE"`` texts resolved against every policy of the pairs (refused in one line if none has it)."""
    if not policy_args:
        return ()
    classes = [cls for spec, cache in dict.fromkeys(pairs) for cls in (SPECULATION.get(spec), CACHING.get(cache))]
    try:
        return resolve([split_assignment(a) for a in policy_args], list(dict.fromkeys(classes)))
    except SimulatorError as exc:
        raise ExecutorError(str(exc)) from None


def for_pair(resolved: tuple, spec: str, cache: str) -> tuple:
    """The resolved parameters that belong to this speculation + caching pair."""
    return tuple((q, v) for q, v in resolved if q.rsplit(".", 1)[0] in (spec, cache))


def default_runtime(profile_path: str | Path) -> str:
    """The runtime that goes with a profile: ``X.runtime.toml`` next to a calibrated ``X.toml``, else the default.

    A calibrated profile describes this machine's hardware; what the executor
    costs on its host was calibrated with it and written next to it. An old
    (schema /1) file carries those costs itself; a built-in profile has none,
    and the default runtime (pregate-eager) prices it.
    """
    text = str(profile_path)
    if text.endswith(".toml"):
        sibling = Path(text[:-len(".toml")] + ".runtime.toml")
        if sibling.is_file():
            return str(sibling)
    return ""


def _rel(sim: float, meas: float) -> float:
    return (sim - meas) / meas if meas else float("nan")


def validate(traces: list[str], profile_path: str, device: str = "cpu", *, policies=None, caches=None,
             batch_sizes=None, dtype: str = "", groups: int | None = None, warmup: int | None = None,
             quick: bool = False, repeats: int = 1, log=print, runtime_path: str = "", bar=None,
             placements=None, policy_args=()) -> dict:
    """``policy_args``: ``"NAME=VALUE"`` policy parameters, each applied to the points whose policy has it."""
    load_start = load_average()
    profile = load_profile(profile_path)
    runtime_path = str(runtime_path or default_runtime(profile_path))
    runtime = load_runtime(runtime_path, profile)
    policies = parse_policies(policies or (QUICK_POLICIES if quick else DEFAULT_POLICIES))
    resolved = resolve_pair_args(policy_args, policies)
    caches = caches or (["50%"] if quick else ["25%", "50%"])
    placements = parse_placements(placements, quick)
    batch_sizes = batch_sizes or ([1] if quick else [1, 16])
    if groups is None and quick:
        groups = 2
    if bar is not None:  # a tqdm-like bar: one tick per executor run, the total known before the first
        bar.total = _planned_runs(traces, policies, caches, batch_sizes, repeats, len(placements))  # shown from the first tick
    points, residents, skipped = [], [], []
    cells = []  # one per trace and batch size: what it runs, and each setting's rounds so far
    for trace in traces:
        ex = TraceExecutor(trace, device, dtype)
        name = Path(str(trace)).name
        pairs = policies
        if not ex.meta.ahead_distance and any(s in NO_AHEAD_FALLBACK for s, _ in policies):
            pairs = [(NO_AHEAD_FALLBACK.get(s, s), c) for s, c in policies]
            log(f"{name}: no 'ahead' column; speculation that reads it replaced by "
                f"{', '.join(sorted({NO_AHEAD_FALLBACK[s] for s, _ in policies if s in NO_AHEAD_FALLBACK}))}")
        pairs = list(dict.fromkeys(pairs))
        for batch in batch_sizes:
            stream = ex.stream(batch, groups)
            base = Settings(profile=str(profile_path), runtime=runtime_path, batch_size=batch, dtype=ex.dtype_name)
            sim = Simulation(None, base, profile=profile, stream=stream, runtime=runtime)
            if batch == batch_sizes[0]:
                missing = [what for what, used in (("expert", sim.costs.used_table), ("dense block", sim.costs.used_dense_table))
                           if not used]
                if missing:
                    log(f"{name}: profile {profile.name} has no measured {' or '.join(missing)} time for this "
                        f"model's shape ({ex.meta.d_model} wide, {ex.dtype_name}); the roofline prices it "
                        f"(pregate calibrate --trace {trace} measures it)")
            for cache in caches:  # refuse before measuring anything
                st = base.replace(cache=cache)
                check_fits(profile["gpu.memory"], sim.costs.dense_bytes, ex.capacity(st, groups),
                           ex.expert_bytes, f"the GPU in profile {profile.name}")
            res_settings = base.replace(buffering="resident")
            todo = [res_settings] + [base.replace(speculation=spec, cache_policy=cache_policy, cache=cache,
                                                  policy_args=for_pair(resolved, spec, cache_policy))
                                     for spec, cache_policy in pairs for cache in caches]
            todo += [base.replace(buffering=b, cache=cache) for b in placements for cache in caches]
            cells.append(_Cell(name, ex, batch, sim, todo))
    for _ in range(max(1, repeats)):
        # every setting of every trace and batch size once per round: a slow spell of the machine
        # hits one round of a point, and the point keeps its fastest round (noise only ever adds
        # time). With the rounds inside each trace and batch size, all of one cell's rounds fell
        # within a minute, and one slow minute put all its points 15-35% off
        for c in cells:
            # one unmeasured run first: new kernel shapes load lazily and the GPU's clocks ramp up
            # under load; the first measured run would pay for both. And in every round: right after
            # another trace's runs, the sample's all-resident point (first in its turn) measured up to
            # 40% slower than its offloaded points
            c.ex.run(c.todo[0], warmup=warmup, groups=groups).close()
            if bar is not None:
                bar.update(1)
            for i, st in enumerate(c.todo):
                if i in c.failed:
                    continue
                try:
                    rt = c.ex.run(st, warmup=warmup, groups=groups)
                    if bar is not None:
                        bar.update(1)
                except ExecutorError as exc:  # one point that cannot run costs that point, not the rest
                    if i == 0:
                        raise
                    c.failed.add(i)
                    skipped.append({"trace": c.name, "batch_size": c.batch, "speculation": st.speculation,
                                    "cache_policy": st.cache_policy, "cache": st.cache,
                                    "buffering": st.buffering, "reason": str(exc)})
                    log(f"{c.name} b{c.batch} {st.speculation}+{st.cache_policy} {st.buffering} cache {st.cache}: "
                        f"skipped ({exc})")
                    continue
                latencies = rt.step_latencies()
                mean = float(np.mean(latencies))
                c.runs.setdefault(i, []).append((mean, latencies))
                if i not in c.best or mean < min(m for m, _ in c.runs[i][:-1]):
                    c.best[i] = c.point(i, st, rt, groups)
                rt.close()
    for c in cells:
        for i in sorted(c.best):
            point, runs = c.best[i], c.runs[i]
            point["measured_mean_s_rounds"] = [m for m, _ in runs]
            _keep_fastest_steps(point, [steps for _, steps in runs])
            point.pop("_simulated_steps", None)
            (points if i else residents).append(point)
            log(_line(point))
    result = summarise(points, residents, profile, device, batch_sizes)
    result["runtime"], result["runtime_path"] = runtime.name, runtime.path
    result["clock"] = CLOCK_WHAT[clock_name()]  # what the measured side was timed on
    result["skipped"] = skipped
    result["summary"]["skipped"] = len(skipped)
    result["load_average"] = {"start": load_start, "end": load_average(),
                              "calibration": calibration_load(profile_path)}
    return result


class _Cell:
    """One trace at one batch size in validation: its settings and, per setting, its rounds so far."""

    def __init__(self, name: str, ex, batch: int, sim, todo: list):
        self.name, self.ex, self.batch, self.sim, self.todo = name, ex, batch, sim, todo
        self.best: dict[int, dict] = {}  # the fastest round's point
        self.runs: dict[int, list[tuple]] = {}  # per setting, each round's (mean, step latencies)
        self.failed: set[int] = set()
        self._simulated: dict[int, tuple] = {}  # the simulator's side depends on the setting alone

    def point(self, i: int, st: Settings, rt, groups) -> dict:
        if i not in self._simulated:
            replay = self.sim.replay(st, fast=False) if i else None
            self._simulated[i] = (self.sim.run(st, bounds=False), replay)
        simulated, replay = self._simulated[i]
        point = _point(self.name, st, rt, simulated, self.ex.capacity(st, groups))
        if replay is not None:
            m = rt.summary()
            point["counts_agree"] = bool(replay.hits == m["hits"] + m["late_hits"]
                                         and replay.misses == m["misses"]
                                         and replay.prefetches == m["prefetches"])
        return point


def calibration_load(profile_path) -> dict | None:
    """The load averages the profile's calibration recorded (its ``.calibration.json``), if it has them."""
    side = Path(str(profile_path)).with_suffix(".calibration.json")
    try:
        env = json.loads(side.read_text()).get("environment", {})
    except (OSError, ValueError, AttributeError):
        return None
    if env.get("load_average") is None:
        return None
    return {"start": env["load_average"], "end": env.get("load_average_end")}


def load_note(result: dict, cores: int | None = None) -> str | None:
    """One line when the validation ran at another load than the calibration (None when alike or unknown).

    Both are means of the readings at the start and the end; one busy core's
    difference or more is flagged, since the errors then include the other
    work's slowing of the measured side (see :func:`pregate.executor.device.load_average`).
    """
    loads = result.get("load_average") or {}
    cal = loads.get("calibration") or {}

    def mean(d):
        xs = [x for x in (d.get("start"), d.get("end")) if x is not None]
        return sum(xs) / len(xs) if xs else None

    here, there = mean(loads), mean(cal)
    if here is None or there is None or abs(here - there) < 1.0:
        return None
    cores = cores or os.cpu_count() or 1
    return (f"note: calibrated at load average {there:.1f}, validated at {here:.1f} on {cores} cores: other work "
            "slows the measured steps (the CPU clock leaves out waiting for a core, not sharing its caches and "
            "memory), so part of the error is the load; calibrate and validate at similar loads")


def _planned_runs(traces, policies, caches, batch_sizes, repeats: int, placements: int = 0) -> int:
    """Executor runs validate will make (the progress bar's total): per trace, batch size and round, one
    warm-up, the all-resident run and every pair x cache size (pairs deduplicated as above)."""
    from pregate.traces import open_trace

    total = 0
    for trace in traces:
        ahead = open_trace(trace).meta.ahead_distance
        pairs = policies if ahead else [(NO_AHEAD_FALLBACK.get(s, s), c) for s, c in policies]
        total += len(batch_sizes) * max(1, repeats) * (2 + (len(dict.fromkeys(pairs)) + placements) * len(caches))
    return total


def _keep_fastest_steps(point: dict, rounds: list[list[float]]) -> None:
    """The point's measured latency statistics (and their errors) from :func:`fastest_steps` of its rounds."""
    steps = fastest_steps(rounds)
    if steps is None or len(rounds) < 2:
        return
    m = latency_stats(steps)
    for stat in ("mean", "p50", "p95"):
        point[f"measured_{stat}_s"] = m[stat]
        point[f"rel_error_{stat}"] = _rel(point[f"simulated_{stat}_s"], m[stat])
    point["ks"] = ks_statistic(steps, point.pop("_simulated_steps"))
    point["measured_from"] = f"each step's least latency over {len(rounds)} rounds"


def _point(trace: str, st: Settings, rt, simulated, capacity: int) -> dict:
    meas = rt.step_latencies()
    steps = [s for s in simulated.steps if s.decode] or simulated.steps
    simu = [s.latency_s for s in steps]
    m, s = latency_stats(meas), latency_stats(simu)
    summary = rt.summary()  # the measured run's shared figures and its host phases
    measured, simulated_run = RunSummary.from_dict(summary), RunSummary.from_dict(simulated.summary)
    return {
        "trace": trace, "batch_size": st.batch_size, "speculation": st.speculation, "cache_policy": st.cache_policy,
        "cache": st.cache if st.buffering != "resident" else "resident", "cache_experts": capacity,
        "buffering": st.buffering,
        **({"policy_args": dict(st.policy_args)} if st.policy_args else {}),
        "steps": len(meas),
        "measured_mean_s": m["mean"], "measured_p50_s": m["p50"], "measured_p95_s": m["p95"],
        "simulated_mean_s": s["mean"], "simulated_p50_s": s["p50"], "simulated_p95_s": s["p95"],
        "rel_error_mean": _rel(s["mean"], m["mean"]), "rel_error_p50": _rel(s["p50"], m["p50"]),
        "rel_error_p95": _rel(s["p95"], m["p95"]), "ks": ks_statistic(meas, simu),
        "measured_hits": measured.hits, "measured_late_hits": measured.late_hits,
        "measured_misses": measured.misses, "measured_prefetches": measured.prefetches,
        "simulated_hits": simulated_run.hits, "simulated_late_hits": simulated_run.late_hits,
        "simulated_misses": simulated_run.misses,
        "measured_stall_share": measured.stall_share, "simulated_stall_share": simulated_run.stall_share,
        "bytes_moved": measured.bytes_moved,
        # where the executor's host time went, per decode step (for finding what the model misses)
        "measured_host_plan_s": summary["host_plan_s_per_step"],
        "measured_host_route_s": summary["host_route_s_per_step"],
        "measured_host_dense_s": summary["host_dense_s_per_step"],
        "measured_host_expert_s": summary["host_expert_s_per_step"],
        "experts_per_step": summary["experts_per_step"],
        "layer_steps_per_step": summary["layer_steps_per_step"],
        "simulated_compute_s": sum(x.compute_s for x in steps) / max(1, len(steps)),
        "simulated_dispatch_s": sum(x.dispatch_s for x in steps) / max(1, len(steps)),
        "simulated_stall_s": sum(x.stall_s for x in steps) / max(1, len(steps)),
        "measured_stall_s": measured.stall_s / max(1, measured.steps + measured.prefill_passes),
        "_simulated_steps": simu,  # for the KS statistic against the fastest steps (dropped then)
    }


def _line(p: dict) -> str:
    placed = f" {p['buffering']}" if p.get("buffering") not in (None, "cache", "resident") else ""
    return (f"{p['trace']} b{p['batch_size']} {p['speculation']}+{p['cache_policy']}{placed} cache {p['cache']}: "
            f"measured {p['measured_mean_s'] * 1e3:.3f} ms, simulated {p['simulated_mean_s'] * 1e3:.3f} ms "
            f"({p['rel_error_mean']:+.1%}), KS {p['ks']:.2f}")


def summarise(points: list[dict], residents: list[dict], profile, device: str, batch_sizes) -> dict:
    errors = np.abs([p["rel_error_mean"] for p in points]) if points else np.zeros(0)
    summary = {
        "points": len(points),
        "median_abs_error": float(np.median(errors)) if len(errors) else None,
        "p95_abs_error": float(np.percentile(errors, 95)) if len(errors) else None,
        "kendall_tau": kendall_tau([p["measured_mean_s"] for p in points], [p["simulated_mean_s"] for p in points]),
        "counts_agree": all(p.get("counts_agree", True) for p in points),
    }
    by_trace: dict = {}
    for p in points:
        by_trace.setdefault((p["trace"], p["batch_size"]), []).append(p)
    taus = {f"{t}/b{b}": kendall_tau([p["measured_mean_s"] for p in ps], [p["simulated_mean_s"] for p in ps])
            for (t, b), ps in by_trace.items()}
    summary["kendall_tau_by_trace_and_batch"] = taus
    for batch in batch_sizes:
        ratios = []
        for r in residents:
            if r["batch_size"] != batch:
                continue
            ps = [p for p in points if p["trace"] == r["trace"] and p["batch_size"] == batch]
            half = [p for p in ps if p["cache"] == "50%"] or ps
            if half and r["measured_mean_s"]:
                ratios.append((min(p["measured_mean_s"] for p in half) / r["measured_mean_s"], r["trace"]))
        summary[f"best_offload_vs_resident_ratio_b{batch}"] = max(r for r, _ in ratios) if ratios else None
        summary[f"best_offload_vs_resident_ratio_b{batch}_by_trace"] = {t: r for r, t in ratios}
    return {"summary": summary, "device": device, "profile": profile.name, "profile_path": profile.path,
            "points": points, "resident": residents}


def write_outputs(result: dict, out: str | Path) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "validation.json", out / "points.csv"]
    files[0].write_text(json.dumps(result, indent=2, default=float) + "\n")
    rows = result["points"] + result["resident"]
    if rows:
        with files[1].open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0].keys()) + ["counts_agree"] * ("counts_agree" not in rows[0]),
                                    extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    png = out / "scatter.png"
    if scatter_plot(result, png):
        files.append(png)
    return files


def scatter_title(result: dict) -> str:
    """The scatter's title: the numbers printed on stdout (error statistics over the settings, not the
    all-resident references, which are drawn but not counted)."""
    s = result["summary"]
    tau = s.get("kendall_tau")

    def pct(x):
        return "n/a" if x is None else f"{x:.1%}"

    return (f"{result.get('device', '?')} / {result.get('profile', '?')}: {s['points']} settings + "
            f"{len(result['resident'])} all-resident\nmedian |error| {pct(s.get('median_abs_error'))}, "
            f"p95 {pct(s.get('p95_abs_error'))}, tau {tau if tau is None else round(tau, 2)}")


def scatter_plot(result: dict, path: Path) -> bool:
    """Simulated vs measured mean step latency, one point per setting; False without matplotlib.

    Drawn here rather than by the analysis part, which sits beside the executor, not below it
    (ARCHITECTURE.md); the report draws its own from the validation JSON.
    """
    points = result["points"] + result["resident"]
    if not points:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 5))
    batches = sorted({p["batch_size"] for p in points})
    for b in batches:
        ps = [p for p in points if p["batch_size"] == b]
        ax.scatter([p["measured_mean_s"] * 1e3 for p in ps], [p["simulated_mean_s"] * 1e3 for p in ps],
                   label=f"batch {b}", s=18)
    values = [v * 1e3 for p in points for v in (p["measured_mean_s"], p["simulated_mean_s"])]
    lo, hi = min(values) * 0.8, max(values) * 1.25
    grid = np.geomspace(lo, hi, 50)
    ax.plot(grid, grid, "k-", lw=0.8, label="simulated = measured")
    ax.fill_between(grid, grid * 0.85, grid * 1.15, color="grey", alpha=0.15, label="+-15%")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured mean step latency (ms)")
    ax.set_ylabel("simulated mean step latency (ms)")
    ax.set_title(scatter_title(result), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
