"""The planner's own host time for every speculation and caching policy pair, measured by running it alone.

Why: the executor calls the simulator's planner once per MoE layer step, and
what that call costs depends on the policies far more than on anything else
the loop does there. On the 2-core CPU machine, at batch 1, the planner alone
took 6-9 us per layer step for none+lru and 55-86 us for multi_layer+least-stale
over the same traces (a speculation policy scores candidates and asks the cost gate about
each). One ``host.layer_step`` for every policy made the dearer pairs look
cheap by 20-30% at batch 4. So calibration times the planner alone for each
pair (the same objects the executor builds, over the same synthetic trace,
the copies told as landed as the CPU executor tells them), and the runtime
profile keeps a row per pair: seconds per layer step and per requested
expert, fitted over three batch sizes and two cache sizes.

The executor's time around the planner (its slot bookkeeping, the copies'
issue) is fitted separately in :func:`pregate.executor.calibrate.executor_overheads`
from the same runs less the planner's own time, so the two add up without
counting anything twice.
"""

from __future__ import annotations

import numpy as np

from pregate.executor.device import now
from pregate.executor.runtime import make_policies, trace_planner_factory
from pregate.simulator.policies import CACHING, SPECULATION

# Speculation policies calibration cannot build on its own synthetic trace: learned needs a predictor
# file trained for the model. A pair without a row costs the dearest measured row of its caching policy.
NOT_MEASURED = {"learned": "needs a trained predictor file for the model"}
SETTINGS = tuple((b, c) for b in (1, 4, 8) for c in ("25%", "50%"))  # (batch, cache): what the fit spans


def planner_alone(ex, settings, groups: int, reps: int) -> dict:
    """The planner's least time over ``reps`` walks of the stream with ``settings``, and its work counted.

    Each walk builds the cache and planner afresh (as the executor does per
    run) and plans every layer step in order; copies into the cache are told
    as landed at once, as the CPU executor does after its synchronous copies.
    """
    stream = ex.stream(settings.batch_size, groups)
    capacity = ex.capacity(settings, groups)
    best, work = float("inf"), None
    for _ in range(reps):
        cache, planner, _ = make_policies(settings, ex.layout, capacity, trace_planner_factory(stream), stream=stream)
        landed = cache.landed
        requests = copies = 0
        start = now()
        for ls in range(stream.n_layer_steps):
            plan = planner.plan(ls)
            into = [obj for obj, _, cached in plan.misses if cached] + plan.admits + plan.prefetches
            for obj in into:
                landed(obj)
            requests += len(plan.hits) + len(plan.misses) + len(plan.cpu)
            copies += len(into)
        best = min(best, now() - start)
        work = {"layer_steps": stream.n_layer_steps, "requests": requests, "copies": copies}
    return {"seconds": best, **work}


def fit_pair(runs: list[dict]) -> tuple[float, float]:
    """(seconds per layer step, seconds per requested expert): least squares over the runs, both >= 0.

    Where the two-term fit would give a negative term (noise on two nearly
    proportional columns), the time is all per layer step instead.
    """
    A = np.array([[r["layer_steps"], r["requests"]] for r in runs], float)
    y = np.array([r["seconds"] for r in runs], float)
    (a, c), *_ = np.linalg.lstsq(A, y, rcond=None)
    if a < 0 or c < 0:
        return float(y.sum() / A[:, 0].sum()), 0.0
    return float(a), float(c)


def measure_planner_costs(ex, base, source: str, quick: bool, groups: int = 2, log=None) -> tuple[list, dict]:
    """One row per measurable policy pair (for ``[[planner_cost]]``), and the runs behind each.

    ``ex``: a TraceExecutor over the calibration's synthetic trace (its stream
    and capacities; nothing runs on the device); ``base``: the settings every
    pair starts from.
    """
    rounds = 3 if quick else 4
    pairs = [(s, c) for s in SPECULATION.names() if s not in NOT_MEASURED for c in CACHING.names()]
    best: dict[tuple, list[dict]] = {}
    for r in range(rounds):
        # every pair once per round, each run keeping its least time over the rounds: a slow spell
        # of the machine then costs one round of many pairs, not every repeat of one pair
        if log:
            log(f"  planner alone: round {r + 1} of {rounds} over {len(pairs)} policy pairs")
        for spec, cache in pairs:
            now_runs = [planner_alone(ex, base.replace(speculation=spec, cache_policy=cache, batch_size=b, cache=size),
                                      groups, 1) for b, size in SETTINGS]
            kept = best.setdefault((spec, cache), now_runs)
            for i, run in enumerate(now_runs):
                if run["seconds"] < kept[i]["seconds"]:
                    kept[i] = run
    rows, runs = [], {}
    for (spec, cache), pair_runs in best.items():
        layer_step, request = fit_pair(pair_runs)
        runs[f"{spec}+{cache}"] = pair_runs
        rows.append({"speculation": spec, "caching": cache, "layer_step": layer_step, "request": request,
                     "source": f"{source}: the planner alone over a synthetic tiny shape at batch 1, 4 and 8, caches "
                               f"25% and 50%, each run's least time over {rounds} rounds, fitted to a x layer steps "
                               "+ b x requested experts"})
    return rows, {"runs": runs, "not_measured": NOT_MEASURED}
