"""Where the points run: batched into tasks for a local process pool or a Ray cluster.

Both give the same numbers: the simulator is deterministic for a seed and every
worker runs the same code. Tasks group the points that share a prepared
simulation, so each worker prepares it once.
"""

from __future__ import annotations

import math
import os
from typing import Callable

from pregate.simulator.settings import Settings
from pregate.simulator.sweep_grid import SweepError
from pregate.simulator.sweep_plan import Plan, Point
from pregate.simulator.sweep_point import _group_key, run_task


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def make_tasks(points: list[Point], profiles: dict, workers: int, size: int | None = None) -> list[dict]:
    """Batch points that share a prepared simulation (and bounds) into tasks, enough to balance workers."""
    groups: dict[tuple, list[Point]] = {}
    for p in points:
        groups.setdefault(_group_key(p.trace_id, p.settings), []).append(p)
    size = size or max(1, min(32, math.ceil(len(points) / max(1, workers * 8))))
    tasks = []
    for (trace_id, profile, *_), members in groups.items():
        # points sharing an oracle bound next to each other
        members.sort(key=lambda p: (p.settings.cache, p.settings.compression, p.settings.per_layer,
                                    p.settings.buffering, p.settings.max_prefetch, p.settings.copy_engines,
                                    p.settings.seed, p.settings.speculation, p.settings.cache_policy))
        for i in range(0, len(members), size):
            batch = members[i:i + size]
            tasks.append({"trace": batch[0].trace, "trace_id": trace_id, "profiles": {profile: profiles[profile]},
                          "points": [(p.key, p.settings.to_dict()) for p in batch]})
    return tasks


def _run_pool(tasks: list[dict], workers: int, finished: Callable[[list[dict]], None]) -> None:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, wait

    from pregate.simulator.poolguard import exit_on_second_interrupt, guarded_pool, restore_interrupt, stop_pool

    # spawn, not fork: polars and numpy keep thread pools that a forked child may find locked.
    ctx = mp.get_context("spawn")
    # Ctrl-C: workers killed at once (finished rows are already stored), a second Ctrl-C exits; workers die with us
    guarded = exit_on_second_interrupt()
    pool = guarded_pool(min(workers, len(tasks)), mp_context=ctx)
    try:
        # Submit largest groups first is not needed: tasks are similar in size.
        futures = {pool.submit(run_task, t) for t in tasks}
        while futures:
            done, futures = wait(futures, return_when=FIRST_COMPLETED)
            for fut in done:
                finished(fut.result())
    except BaseException:
        stop_pool(pool)
        raise
    pool.shutdown(wait=True)
    if guarded:
        restore_interrupt()


def _run_ray(tasks: list[dict], plan: Plan, address: str, workers: int,
             finished: Callable[[list[dict]], None]) -> None:
    try:
        import ray
    except ImportError:
        raise SweepError("--ray needs Ray: pip install 'pregate[ray]'") from None
    if not ray.is_initialized():
        if address == "local":
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    remote = ray.remote(num_cpus=1)(run_task)
    # Each (trace, batch size) stream is built once, here, and put in the object store; its
    # arrays reach the workers without a copy, and no worker reads the trace itself.
    from pregate.simulator.stream import build_stream
    from pregate.traces import open_trace

    streams = {}
    refs = []
    for task in tasks:
        batch = Settings(**task["points"][0][1]).batch_size
        key = (task["trace_id"], batch)
        if key not in streams:
            streams[key] = ray.put(build_stream(open_trace(task["trace"]), batch_size=batch))
        # boxed in a list so that Ray passes the reference, not the stream, as the argument
        refs.append(remote.remote({**task, "batch_size": batch, "stream": [streams[key]]}))
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                finished(ray.get(ref))
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
