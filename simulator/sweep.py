"""Sweeps: the grid of traces x settings, run in parallel, stored one Parquet row per point.

A user's question ("what should I run on my RTX 3090?") is many simulations:
every speculation and caching policy, cache size, compression and batch size,
on one or more traces and hardware profiles. A sweep is that grid.

* **Grid.** A :class:`SweepSpec` holds the traces and, per :class:`Settings`
  field, the list of values to try (a single value is a list of one). The
  points are the product, in a fixed order.
* **Keys.** Every point has a key: a hash of its full settings, the trace's
  content (the bytes of its parts) and the hardware profile's content. Results
  are keyed by it, so a rerun skips finished points and a changed trace or
  profile is simulated again.
* **Storage.** Finished points go to ``RESULTS/points-NNNNN.parquet`` chunk
  files, each written to a temporary name and renamed (no file is ever seen
  half-written). They are flushed at least every second and whenever the sweep
  stops, so an interrupted sweep keeps everything that finished; the reader
  unions the chunks and drops duplicate keys.
* **Execution.** Points sharing a trace, profile, batch size, dtype and host
  tier share one prepared :class:`Simulation` and its bound runs; they are
  batched into tasks for a process pool (``workers``, default all local cores)
  or a Ray cluster (``ray_address``), which give the same numbers: the
  simulator is deterministic for a seed and every worker runs the same code.

The parts, one module each: ``sweep_grid`` (the grid and its config),
``sweep_plan`` (checking and keying points), ``sweep_point`` (running one point
in a worker), ``sweep_store`` (the chunked results folder) and ``sweep_pool``
(local processes or Ray). This module runs a sweep and re-exports their names.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pregate.simulator.sweep_grid import (  # noqa: F401  (re-exported)
    DEFAULT_SAMPLE, SAMPLE_PREFIX, SETTINGS_FIELDS, TRACE_KEYS, SweepError, SweepSpec, field_default, field_kind,
    load_config, parse_list, resolve_trace, sample_trace, sample_trace_path, spec_from_mapping)
from pregate.simulator.sweep_plan import (  # noqa: F401  (re-exported)
    SWEEP_FORMAT, Plan, Point, plan_sweep, point_key, profile_identity, runtime_id, trace_identity)
from pregate.simulator.sweep_point import point_row, run_point, run_task, _raise_task_error  # noqa: F401
from pregate.simulator.sweep_pool import _run_pool, _run_ray, default_workers, make_tasks  # noqa: F401
from pregate.simulator.sweep_store import (  # noqa: F401  (re-exported)
    CHUNK_PREFIX, CORRUPT_SUFFIX, FLUSH_SECONDS, _Writer, _write_manifest, chunk_files, compact, finished_keys,
    read_results, write_chunk)


@dataclass
class SweepOutcome:
    total: int  # points in the grid
    skipped: int  # already in the results folder
    ran: int
    seconds: float
    results: Path

    @property
    def points_per_s(self) -> float:
        """Points simulated per second of wall time (this run's, skipped points excluded)."""
        return self.ran / self.seconds if self.seconds > 0 else 0.0


def run_sweep(spec: SweepSpec | Plan, results: str | Path, *, workers: int | None = None,
              ray_address: str | None = None, progress: bool = True, in_process: bool | None = None,
              on_rows: Callable[[list[dict]], None] | None = None) -> SweepOutcome:
    """Run every point of the grid not yet in ``results``; returns what was done.

    ``workers``: processes of the local pool (default: all local cores); one
    worker runs in this process unless ``in_process=False``. ``ray_address``:
    run on a Ray cluster instead (``local`` starts a local instance; an
    already initialised Ray is used as it is).
    """
    plan = spec if isinstance(spec, Plan) else plan_sweep(spec)
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    _write_manifest(results, plan)
    done = finished_keys(results, set_aside=True)
    pending = [p for p in plan.points if p.key not in done]
    workers = workers or default_workers()
    start = time.monotonic()
    writer = _Writer(results)
    bar = None
    if pending:
        from tqdm import tqdm

        bar = tqdm(total=len(pending), unit="pt", desc="sweep", disable=not progress, file=sys.stderr,
                   dynamic_ncols=True, smoothing=0.1)

    def finished(result: dict) -> None:
        rows = result["rows"]
        writer.add(rows)
        if on_rows is not None:
            on_rows(rows)
        if bar is not None:
            bar.update(len(rows))
        if result["error"] is not None:
            writer.flush()
            _raise_task_error(result["error"])

    try:
        if pending:
            local = not ray_address and workers == 1 and in_process is not False
            # in this process every point is its own task (the prepared simulation is shared anyway),
            # so an interruption loses no finished point
            tasks = make_tasks(pending, plan.profiles, workers, size=1 if local else None)
            if ray_address:
                _run_ray(tasks, plan, ray_address, workers, finished)
            elif local:
                for task in tasks:
                    finished(run_task(task))
            else:
                _run_pool(tasks, workers, finished)
    finally:
        writer.flush()
        if bar is not None:
            bar.close()
    compact(results)
    return SweepOutcome(total=len(plan.points), skipped=len(plan.points) - len(pending), ran=writer.written,
                        seconds=time.monotonic() - start, results=results)
