"""Sweep scaling: the same sweep with 2 worker processes against 1, in one run.

Target (ARCHITECTURE.md): 2 workers >= 1.7x one worker on a 2-core machine. Both
runs use the same code path (a process pool of 1 or 2 spawned workers, fresh
for each run, so neither reuses the other's prepared simulations), on the
shipped sample trace, each into a fresh results folder; the rounds alternate
(1, 2, 2, 1, ...) so that a change of machine load hits both alike. The best
time of each is compared, and the points of every run must be identical. The
workers' CPU time per run shows whether a shortfall is overhead (more CPU
seconds with 2 workers) or other load on the machine (fewer than 2 cores busy).

    python bench/bench_sweep.py              # 1 round each (about 20 s on 2 idle cores)
    python bench/bench_sweep.py --rounds 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

TARGET = 1.7
GRID = {
    "profile": ["rtx3090"],
    "speculation": ["none", "layer_minus_1", "multi_layer", "adaptive", "transition"],
    "cache_policy": ["lru", "lfu", "least-stale", "pinned-hot"],
    "cache": ["10%", "25%", "50%"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1, help="runs of each worker count (default: 1)")
    parser.add_argument("--trace", help="trace folder (default: the shipped sample trace)")
    args = parser.parse_args()

    from pregate.simulator.sweep import SweepSpec, plan_sweep, read_results, run_sweep, sample_trace

    trace = args.trace or str(sample_trace())
    plan = plan_sweep(SweepSpec([trace], GRID, source="bench"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"sweep of {len(plan.points)} points on {trace}; {cores} cores visible; load average "
          f"{os.getloadavg()[0]:.2f} before")
    times: dict[int, list[float]] = {1: [], 2: []}
    frames = []
    order = []
    for r in range(args.rounds):
        order += [1, 2] if r % 2 == 0 else [2, 1]
    with tempfile.TemporaryDirectory(prefix="pregate-bench-sweep-") as tmp:
        for i, workers in enumerate(order):
            out = Path(tmp) / f"run-{i}-w{workers}"
            t0, start = os.times(), time.perf_counter()
            outcome = run_sweep(plan, out, workers=workers, in_process=False, progress=False)
            elapsed = time.perf_counter() - start
            t1 = os.times()
            cpu = (t1.children_user - t0.children_user) + (t1.children_system - t0.children_system)
            assert outcome.ran == len(plan.points)
            times[workers].append(elapsed)
            frames.append(read_results(out))
            # CPU seconds the workers got: less than workers x wall time means they waited for a core
            print(f"  {workers} worker(s): {elapsed:6.2f} s ({len(plan.points) / elapsed:.1f} points/s); workers' CPU "
                  f"{cpu:.2f} s = {cpu / elapsed:.2f} cores busy on average")
    identical = all(f.equals(frames[0]) for f in frames[1:])
    one, two = min(times[1]), min(times[2])
    ratio = one / two
    print(f"1 worker {one:.2f} s, 2 workers {two:.2f} s: speed-up {ratio:.2f}x (target >= {TARGET}x): "
          f"{'met' if ratio >= TARGET else 'NOT met'}; load average {os.getloadavg()[0]:.2f} after")
    print(f"points identical across runs: {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
