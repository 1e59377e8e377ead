"""Running one point, in whichever process holds it: prepared simulations and bound runs shared per worker.

Points sharing a trace, profile, batch size, dtype and host tier share one
prepared :class:`Simulation` and its bound runs; a worker keeps a few of each.
A task (a batch of such points) returns its rows, and on failure the rows that
finished before it with the error, so nothing finished is lost.
"""

from __future__ import annotations

import json
from typing import Any

from pregate.simulator.settings import Settings
from pregate.simulator.sweep_grid import SweepError, field_default
from pregate.simulator.sweep_plan import Point


# Per worker process: request streams, the prepared simulations over them and the bound runs
# they share. A stream depends only on the trace and the batch size, so the simulations of every
# profile, dtype and host tier share one (it is the large part: a few dozen bytes per trace row).
_STREAMS: dict[tuple, Any] = {}
_SIMS: dict[tuple, Any] = {}
_BOUNDS: dict[tuple, float] = {}
_PRICED: dict[tuple, dict] = {}
_MAX_SIMS = 4
_MAX_STREAMS = 2


def _group_key(trace_id: str, s: Settings) -> tuple:
    return (trace_id, s.profile, s.host, s.runtime, s.batch_size, s.dtype, s.host_tier, s.price_as)


def _stream(trace_path: str, trace_id: str, batch_size: int):
    """The worker's stream of (trace, batch size): built once, reused by every point."""
    key = (trace_id, batch_size)
    stream = _STREAMS.get(key)
    if stream is None:
        from pregate.simulator.stream import build_stream
        from pregate.traces import open_trace

        if len(_STREAMS) >= _MAX_STREAMS:
            old = next(iter(_STREAMS))
            _STREAMS.pop(old)
            for k in [k for k in _SIMS if (k[0], k[4]) == old]:  # group key: trace, profile, host, runtime, batch, ...
                _drop_sim(k)
        stream = build_stream(open_trace(trace_path), batch_size=batch_size)
        _STREAMS[key] = stream
    return stream


def _drop_sim(key: tuple) -> None:
    _SIMS.pop(key, None)
    _PRICED.pop(key, None)
    for b in [b for b in _BOUNDS if b[0] == key]:
        _BOUNDS.pop(b)


def _simulation(trace_path: str, trace_id: str, settings: Settings, profile):
    from pregate.simulator.api import Simulation

    key = _group_key(trace_id, settings)
    sim = _SIMS.get(key)
    if sim is None:
        if len(_SIMS) >= _MAX_SIMS:
            _drop_sim(next(iter(_SIMS)))
        stream = _stream(trace_path, trace_id, settings.batch_size)
        sim = Simulation(trace_path, settings, profile=profile, stream=stream)
        _SIMS[key] = sim
    return key, sim


def _bound_mean(group: tuple, sim, settings: Settings) -> float:
    from pregate.simulator.api import _mean_step

    memo = (group, settings)
    if memo not in _BOUNDS:
        outcome, _ = sim.timed(settings)
        _BOUNDS[memo] = _mean_step(outcome)
    return _BOUNDS[memo]


def run_point(trace_path: str, trace_id: str, settings: Settings, profile) -> dict:
    """The summary of one point: exactly what ``Simulation.run`` reports, with its bounds.

    The two bound runs depend on fewer settings than the point itself, so they
    are memoised per worker and shared by the points that have the same bounds.
    """
    from pregate.simulator.api import add_bounds, bound_settings

    group, sim = _simulation(trace_path, trace_id, settings, profile)
    outcome, cache = sim.timed(settings)
    summary = sim.summarise(settings, outcome, cache)
    resident, oracle = bound_settings(settings)
    add_bounds(summary, _bound_mean(group, sim, resident), _bound_mean(group, sim, oracle),
               sim.lower_bound(settings))
    if settings.uncertainty:
        from pregate.simulator.uncertainty import band

        memo = _PRICED.setdefault(group, {})  # the priced simulations of a group's scenarios, shared by its points
        summary.update(band(sim, settings, settings.uncertainty, settings.seed, memo))
        summary["uncertainty_tokens_per_s"] = json.dumps(summary["uncertainty_tokens_per_s"])
    return summary


def point_row(point: Point, summary: dict) -> dict:
    """One stored row: key, trace, every setting, the summary and a few derived columns."""
    row = {"key": point.key, "trace": point.trace, "trace_id": point.trace_id}
    row.update(point.settings.to_dict())
    if "policy_args" in row:  # one text column, whatever parameters a point sets
        row["policy_args"] = json.dumps(row["policy_args"], sort_keys=True)
    for k, v in summary.items():
        row[{"profile": "profile_name", "runtime": "runtime_name", "host": "host_name"}.get(k, k)] = v
    requests = summary.get("requests") or 0
    row["hit_rate"] = (summary["hits"] + summary["late_hits"]) / requests if requests else None
    tps = summary.get("tokens_per_s")
    r_mean = summary.get("bound_resident_mean_step_latency_s")
    o_mean = summary.get("bound_oracle_mean_step_latency_s")
    row["bound_resident_tokens_per_s"] = tps * summary["ratio_to_resident"] if tps and r_mean else None
    row["bound_oracle_tokens_per_s"] = tps * summary["ratio_to_oracle"] if tps and o_mean else None
    return row


def run_task(task: dict) -> dict:
    """Worker entry point: the rows of a batch of points sharing a trace and a prepared simulation.

    Returns ``{"rows": [...], "error": None}``; when a point fails, the rows of
    the points before it come back with the error, so nothing finished is lost.
    """
    rows: list[dict] = []
    try:
        trace_path = task["trace"]
        if task.get("stream") is not None:  # on Ray: the stream from the object store, once per worker
            key = (task["trace_id"], task["batch_size"])
            if key not in _STREAMS:
                import ray

                if len(_STREAMS) >= _MAX_STREAMS:
                    _STREAMS.pop(next(iter(_STREAMS)))
                _STREAMS[key] = ray.get(task["stream"][0])
        for key, settings_dict in task["points"]:
            settings = Settings(**settings_dict)
            point = Point(key, task["trace"], task["trace_id"], settings)
            summary = run_point(trace_path, task["trace_id"], settings, task["profiles"][settings.profile])
            rows.append(point_row(point, summary))
    except Exception as exc:  # reported by the parent, after it has stored the finished rows
        import traceback

        from pregate.traces.errors import PregateError

        failed = task["points"][len(rows)] if len(rows) < len(task["points"]) else (None, {})
        where = ", ".join(f"{k}={v}" for k, v in failed[1].items() if v != field_default(k))
        return {"rows": rows, "error": {"user": isinstance(exc, PregateError), "message": str(exc),
                                        "point": f"{task['trace']} [{where or 'defaults'}]",
                                        "traceback": traceback.format_exc()}}
    return {"rows": rows, "error": None}


def _raise_task_error(error: dict) -> None:
    if error["user"]:
        raise SweepError(f"point {error['point']}: {error['message']}")
    raise RuntimeError(f"point {error['point']} failed in a worker:\n{error['traceback']}")
