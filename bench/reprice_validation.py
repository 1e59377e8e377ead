"""Re-price a ``pregate validate`` result with another runtime profile, keeping its measurements.

Why: on a shared machine two validation runs differ by more than a cost-model
change does, so a change to the model is judged on the same measured points.
The measured side of every point is kept; the simulated side is recomputed
from the given hardware and runtime profiles, over the same request streams
(rebuilt from the traces, batch sizes and groups the run used).

    python bench/reprice_validation.py OUT/validation.json TRACE... --profile cpu.toml \\
        --runtime cpu.runtime.toml [--groups 1]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def reprice(result: dict, traces: list[str], profile_path: str, runtime_path: str, groups: int | None) -> list[dict]:
    from pregate.executor.run import TraceExecutor
    from pregate.simulator.api import Simulation
    from pregate.simulator.profile import load_profile
    from pregate.simulator.runtime import load_runtime
    from pregate.simulator.settings import Settings

    profile = load_profile(profile_path)
    runtime = load_runtime(runtime_path, profile)
    by_name = {Path(t).name: t for t in traces}
    sims: dict = {}
    out = []
    for p in result["resident"] + result["points"]:
        key = (p["trace"], p["batch_size"])
        if key not in sims:
            ex = TraceExecutor(by_name[p["trace"]], "cpu", "")
            base = Settings(profile=profile_path, runtime=runtime_path, batch_size=p["batch_size"],
                            dtype=ex.dtype_name)
            sims[key] = Simulation(None, base, profile=profile, stream=ex.stream(p["batch_size"], groups),
                                   runtime=runtime)
        sim = sims[key]
        st = sim.settings.replace(buffering="resident") if p["cache"] == "resident" else sim.settings.replace(
            speculation=p["speculation"], cache_policy=p["cache_policy"], cache=p["cache"])
        steps = [s for s in sim.run(st, bounds=False).steps if s.decode]
        out.append(dict(p, repriced_mean_s=float(np.mean([s.latency_s for s in steps]))))
    return out


def summary(points: list[dict], key: str) -> dict:
    from pregate.executor.stats import kendall_tau

    err = np.abs([(p[key] - p["measured_mean_s"]) / p["measured_mean_s"] for p in points])
    return {"median": float(np.median(err)), "p95": float(np.percentile(err, 95)),
            "tau": kendall_tau([p["measured_mean_s"] for p in points], [p[key] for p in points])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("validation", help="validation.json written by pregate validate")
    ap.add_argument("traces", nargs="+", help="the trace folders the run used")
    ap.add_argument("--profile", required=True)
    ap.add_argument("--runtime", required=True)
    ap.add_argument("--groups", type=int, default=None)
    ap.add_argument("--json", help="write the re-priced points here")
    args = ap.parse_args(argv)
    result = json.loads(Path(args.validation).read_text())
    points = reprice(result, args.traces, args.profile, args.runtime, args.groups)
    print(f"{'trace':18} {'b':>2} {'policy':26} {'cache':>8} {'meas ms':>8} {'was ms':>8} {'now ms':>8} {'now err':>8}")
    for p in points:
        pol = "resident" if p["cache"] == "resident" else f"{p['speculation']}+{p['cache_policy']}"
        err = (p["repriced_mean_s"] - p["measured_mean_s"]) / p["measured_mean_s"]
        print(f"{p['trace'][:18]:18} {p['batch_size']:>2} {pol[:26]:26} {p['cache']:>8} "
              f"{p['measured_mean_s'] * 1e3:8.3f} {p['simulated_mean_s'] * 1e3:8.3f} "
              f"{p['repriced_mean_s'] * 1e3:8.3f} {err:+8.1%}")
    off = [p for p in points if p["cache"] != "resident"]
    for label, key in (("recorded", "simulated_mean_s"), ("re-priced", "repriced_mean_s")):
        s = summary(off, key)
        print(f"{label:10} median |err| {s['median']:.1%}, P95 |err| {s['p95']:.1%}, Kendall tau {s['tau']:.3f} "
              f"({len(off)} offloaded points)")
    if args.json:
        Path(args.json).write_text(json.dumps(points, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
