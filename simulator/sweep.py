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
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import sys
import time
import tomllib
from dataclasses import MISSING, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from pregate.simulator.errors import SimulatorError
from pregate.simulator.pricing import require_expert_size
from pregate.simulator.settings import Settings, parse_cache_size

SWEEP_FORMAT = 1  # bump when the meaning of a stored point changes: every key changes with it
CHUNK_PREFIX = "points-"
SAMPLE_PREFIX = "sample:"
DEFAULT_SAMPLE = "pregate-moe-tiny"
FLUSH_SECONDS = 1.0

SETTINGS_FIELDS = {f.name: f for f in fields(Settings)}
TRACE_KEYS = ("trace", "traces")


class SweepError(SimulatorError):
    """A malformed sweep: unknown key, unknown policy, empty grid, unreadable results."""


# ---------------------------------------------------------------------------- samples


def sample_trace_path(name: str = DEFAULT_SAMPLE) -> Path:
    """Where a shipped sample trace lives (it may be missing from a partial install)."""
    return Path(str(resources.files("pregate.traces").joinpath(f"samples/{name}")))


def sample_trace(name: str = DEFAULT_SAMPLE) -> Path:
    path = sample_trace_path(name)
    if not path.is_dir() or not any(path.glob("*.parquet")):
        raise SweepError(f"the shipped sample trace '{name}' is missing from this install ({path})")
    return path


# ---------------------------------------------------------------------------- the grid


@dataclass
class SweepSpec:
    """Traces and, per Settings field, the values to try (each a non-empty list)."""

    traces: list[str]
    grid: dict[str, list] = field(default_factory=dict)
    source: str = "sweep"  # where the spec came from, for error messages

    def axes(self) -> dict[str, list]:
        """Every Settings field with its values: the grid's, else the default alone."""
        out = {}
        for name, f in SETTINGS_FIELDS.items():
            out[name] = list(self.grid[name]) if name in self.grid else [f.default]
        return out

    def settings(self) -> list[Settings]:
        """The product of all axes, in a fixed order, without duplicates."""
        axes = self.axes()
        names = list(axes)
        seen, out = set(), []
        for combo in itertools.product(*(axes[n] for n in names)):
            s = Settings(**dict(zip(names, combo)))
            if s not in seen:
                seen.add(s)
                out.append(s)
        return out

    def to_dict(self) -> dict:
        return {"traces": list(self.traces), "grid": {k: list(v) for k, v in self.grid.items()}}


def _type_name(f) -> str:
    t = f.type if isinstance(f.type, str) else f.type.__name__
    return t


def _coerce(name: str, value: Any, where: str):
    """One grid value checked against the Settings field's type."""
    kind = _type_name(SETTINGS_FIELDS[name])
    if kind == "bool":
        if not isinstance(value, bool):
            raise SweepError(f"{where}: '{name}' takes true or false, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise SweepError(f"{where}: '{name}' takes whole numbers, got {value!r}")
        return value
    if name == "cache" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise SweepError(f"{where}: '{name}' takes strings, got {value!r}")
    return value.strip()


def _unknown_key(where: str, key: str) -> SweepError:
    import difflib

    valid = [*TRACE_KEYS, *SETTINGS_FIELDS]
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return SweepError(f"{where}: unknown key '{key}' (valid: {', '.join(valid)}){hint}")


def spec_from_mapping(data: dict, where: str = "sweep", base: Path | None = None) -> SweepSpec:
    """A SweepSpec from parsed TOML (or any mapping): Settings field names, lists as axes.

    Relative trace paths are taken relative to ``base`` (the config file's folder).
    ``sample:NAME`` names a shipped sample trace.
    """
    traces: list[str] = []
    grid: dict[str, list] = {}
    for key, value in data.items():
        if key in TRACE_KEYS:
            values = value if isinstance(value, list) else [value]
            for v in values:
                if not isinstance(v, str) or not v.strip():
                    raise SweepError(f"{where}: '{key}' takes trace folders (strings), got {v!r}")
                traces.append(v if v.startswith(SAMPLE_PREFIX) or base is None or Path(v).is_absolute()
                              else str(base / v))
            continue
        if key not in SETTINGS_FIELDS:
            if isinstance(value, dict):
                raise SweepError(f"{where}: unknown table [{key}]: a sweep config is flat, one key per Settings "
                                 f"field (a list of values is a grid axis)")
            raise _unknown_key(where, key)
        values = value if isinstance(value, list) else [value]
        grid[key] = [_coerce(key, v, where) for v in values]
    return SweepSpec(traces=traces, grid=grid, source=where)


def load_config(path: str | Path) -> SweepSpec:
    """Read a sweep config (TOML); see simulator/README.md, "Sweeps"."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep config not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SweepError(f"{path}: not valid TOML ({str(exc).splitlines()[0]})") from None
    return spec_from_mapping(data, where=str(path), base=path.parent)


def resolve_trace(name: str) -> Path:
    if name.startswith(SAMPLE_PREFIX):
        return sample_trace(name[len(SAMPLE_PREFIX):] or DEFAULT_SAMPLE)
    return Path(name)


# ---------------------------------------------------------------------------- identity and keys

_IDENTITY_MEMO: dict[tuple, str] = {}


def trace_identity(path: str | Path) -> str:
    """A hash of a trace's content: the names and bytes of its Parquet parts."""
    from pregate.traces.reader import list_parts

    files = list_parts(Path(path))
    stamp = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if stamp in _IDENTITY_MEMO:
        return _IDENTITY_MEMO[stamp]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    ident = h.hexdigest()[:32]
    _IDENTITY_MEMO[stamp] = ident
    return ident


def profile_identity(name: str) -> str:
    """A hash of the profile's TOML bytes (a built-in by name or a file)."""
    from pregate.simulator.profile import builtin_profiles

    path = Path(name)
    if path.suffix == ".toml" or path.exists() or "/" in name:
        raw = path.read_bytes()
    elif name in builtin_profiles():
        raw = (resources.files("pregate.simulator") / "profiles" / f"{name}.toml").read_bytes()
    else:
        raw = name.encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def runtime_id(name: str) -> str:
    """A hash of the runtime profile's TOML bytes (empty: the profile's own or the default)."""
    from pregate.simulator.runtime import runtime_identity

    return hashlib.sha256(runtime_identity(name)).hexdigest()[:32]


def point_key(trace_id: str, profile_id: str, settings: Settings) -> str:
    """The point's identity: format, pregate version, trace, profile and runtime content, every setting."""
    from pregate import __version__

    from pregate.simulator.pricing import identity

    payload = json.dumps(
        {"format": SWEEP_FORMAT, "version": __version__, "trace": trace_id, "profile": profile_id,
         "runtime": runtime_id(settings.runtime), "settings": settings.to_dict(),
         "pricing": identity(settings.price_as)},
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


@dataclass
class Point:
    key: str
    trace: str
    trace_id: str
    settings: Settings


@dataclass
class Plan:
    """A checked sweep: its points and the loaded profiles."""

    spec: SweepSpec
    points: list[Point]
    profiles: dict[str, Any]  # profile setting -> HardwareProfile
    trace_files: dict[str, list[Path]]  # trace id -> its part files


def plan_sweep(spec: SweepSpec) -> Plan:
    """Check every name and value of the grid before any work, and key every point.

    Each problem is refused in one line naming the config and the bad key or value.
    """
    from pregate.simulator.policies import BUFFERING, CACHING, COMPRESSION, SPECULATION
    from pregate.simulator.pricing import check_trace
    from pregate.simulator.profile import detect_profile, load_profile
    from pregate.traces import open_trace

    where = spec.source
    if not spec.traces:
        raise SweepError(f"{where}: no trace: give 'trace = \"FOLDER\"' (or a list) or --trace")
    for name, values in spec.grid.items():
        if not values:
            raise SweepError(f"{where}: axis '{name}' is empty, so the grid has no points; give it at least one value")
    grid = dict(spec.grid)
    registries = {"speculation": SPECULATION, "cache_policy": CACHING, "buffering": BUFFERING,
                  "compression": COMPRESSION}
    axes = spec.axes()
    for name, registry in registries.items():
        for value in axes[name]:
            try:
                registry.get(value)
            except SimulatorError as exc:
                raise SweepError(f"{where}: {exc}") from None
    choices = SETTINGS_FIELDS["host_tier"].metadata.get("choices", ())
    for value in axes["host_tier"]:
        if value not in choices:
            raise SweepError(f"{where}: unknown host_tier '{value}' (valid: {', '.join(choices)})")
    for value in axes["cache"]:
        try:
            parse_cache_size(value, 1 << 62, 1)  # the form only: the trace's count is checked per point
        except SimulatorError as exc:
            raise SweepError(f"{where}: {exc}") from None
    for name in ("batch_size",):
        for value in axes[name]:
            if value < 1:
                raise SweepError(f"{where}: '{name}' must be at least 1, got {value}")
    for name in ("copy_engines", "max_prefetch", "seed"):
        for value in axes[name]:
            if value < 0:
                raise SweepError(f"{where}: '{name}' must not be negative, got {value}")
    if "auto" in axes["profile"]:
        detected = detect_profile()
        grid["profile"] = [detected if p == "auto" else p for p in axes["profile"]]
        spec = SweepSpec(traces=spec.traces, grid=grid, source=spec.source)
        axes = spec.axes()
    profiles = {}
    for name in dict.fromkeys(axes["profile"]):
        try:
            profiles[name] = load_profile(name)
        except SimulatorError as exc:
            raise SweepError(f"{where}: {exc}") from None
    profile_ids = {name: profile_identity(name) for name in profiles}
    from pregate.simulator.runtime import load_runtime

    for name in dict.fromkeys(axes["runtime"]):
        for profile in profiles.values():
            try:
                load_runtime(name, profile)  # an unknown or malformed runtime fails before any work
            except SimulatorError as exc:
                raise SweepError(f"{where}: {exc}") from None
    needs_ahead = [s for s in axes["speculation"] if getattr(SPECULATION.get(s), "needs_ahead", False)]
    settings_list = spec.settings()
    points: list[Point] = []
    trace_files: dict[str, list[Path]] = {}
    seen: set[str] = set()
    for name in dict.fromkeys(spec.traces):
        path = resolve_trace(name)
        trace = open_trace(path)
        if trace.meta.ahead_distance == 0 and needs_ahead:
            raise SweepError(f"{where}: trace {path} has no 'ahead' column (recorded with --ahead 0), which "
                             f"speculation {', '.join(needs_ahead)} need; drop them or sweep that trace apart")
        for spec_name in dict.fromkeys(axes["price_as"]):
            try:
                check_trace(trace.meta, spec_name)  # a topology mismatch fails before any work
            except SimulatorError as exc:
                raise SweepError(f"{where}: {exc}") from None
        if "" in axes["price_as"]:  # points priced at the trace's own sizes need them
            try:
                require_expert_size(trace.meta, f"trace {path}")
            except SimulatorError as exc:
                raise SweepError(f"{where}: {exc}") from None
        experts = sum(st.moe_layers * st.experts for st in trace.meta.stacks.values())
        for value in axes["cache"]:
            try:
                parse_cache_size(value, experts, 1)  # a count above the trace's experts fails before any work
            except SimulatorError as exc:
                raise SweepError(f"{where}: trace {path}: {exc}") from None
        tid = trace_identity(path)
        trace_files[tid] = list(trace.files)
        for s in settings_list:
            key = point_key(tid, profile_ids[s.profile], s)
            if key not in seen:
                seen.add(key)
                points.append(Point(key, str(path), tid, s))
    if not points:
        raise SweepError(f"{where}: the grid is empty")
    return Plan(spec=spec, points=points, profiles=profiles, trace_files=trace_files)


# ---------------------------------------------------------------------------- running one point

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
    return (trace_id, s.profile, s.runtime, s.batch_size, s.dtype, s.host_tier, s.price_as)


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
            for k in [k for k in _SIMS if (k[0], k[3]) == old]:  # group key: trace, profile, runtime, batch, ...
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
    for k, v in summary.items():
        row[{"profile": "profile_name", "runtime": "runtime_name"}.get(k, k)] = v
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


# ---------------------------------------------------------------------------- results storage


def chunk_files(folder: str | Path) -> list[Path]:
    return sorted(Path(folder).glob(f"{CHUNK_PREFIX}*.parquet"))


def _schema_fix(frame):
    """Stable column types across chunks (a chunk may hold only nulls in a column)."""
    import polars as pl

    casts = {}
    for name, dtype in frame.schema.items():
        if dtype == pl.Null:
            casts[name] = pl.String if name in ("expert_table",) else pl.Float64
        elif dtype.is_integer():
            casts[name] = pl.Int64
        elif dtype.is_float():
            casts[name] = pl.Float64
    for name in ("prefetch_precision", "ratio_to_resident", "ratio_to_oracle", "tokens_per_s", "hit_rate",
                 "bound_resident_tokens_per_s", "bound_oracle_tokens_per_s"):
        if name in frame.columns:
            casts[name] = pl.Float64
    return frame.with_columns([pl.col(n).cast(t) for n, t in casts.items()])


def write_chunk(folder: str | Path, rows: list[dict]) -> Path | None:
    """Write rows as the next ``points-NNNNN.parquet``, atomically (temp file, fsync, link)."""
    import polars as pl

    if not rows:
        return None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frame = _schema_fix(pl.DataFrame(rows, infer_schema_length=None)).sort("key")
    tmp = folder / f".{CHUNK_PREFIX}{os.getpid()}-{time.monotonic_ns()}.tmp"
    frame.write_parquet(tmp, compression="zstd")
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    existing = [int(p.stem[len(CHUNK_PREFIX):]) for p in chunk_files(folder) if p.stem[len(CHUNK_PREFIX):].isdigit()]
    n = max(existing, default=0) + 1
    while True:
        target = folder / f"{CHUNK_PREFIX}{n:05d}.parquet"
        try:
            os.link(tmp, target)  # never replaces a chunk another sweep just wrote
            break
        except FileExistsError:
            n += 1
        except OSError:  # no hard links on this filesystem
            if target.exists():
                n += 1
                continue
            os.replace(tmp, target)
            return target
    tmp.unlink()
    return target


CORRUPT_SUFFIX = ".unreadable"


def _read_chunk(path: Path, columns: list[str] | None = None):
    """``(frame, None)``, or ``(None, why)`` when the chunk cannot be read (truncated by a full disk, a copy
    cut short, an edit)."""
    import polars as pl

    try:
        return pl.read_parquet(path, columns=columns), None
    except Exception as exc:  # polars' ComputeError, pyarrow's errors, OSError: all mean "not a usable chunk"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return None, f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def finished_keys(folder: str | Path, set_aside: bool = False) -> set[str]:
    """Keys of the points stored in ``folder``; an unreadable chunk counts as holding none.

    With ``set_aside`` (a sweep about to run) such a chunk is renamed to
    ``*.parquet.unreadable`` and named on stderr, so its points are simulated
    again and the reader never meets it; without, it is only named.
    """
    keys: set[str] = set()
    for f in chunk_files(folder):
        frame, why = _read_chunk(f, ["key"])
        if frame is None:
            if set_aside:
                aside = f.with_name(f.name + CORRUPT_SUFFIX)
                os.replace(f, aside)
                print(f"sweep: {f} is unreadable ({why}); set aside as {aside.name}, "
                      "its points are simulated again", file=sys.stderr)
            else:
                print(f"sweep: {f} is unreadable ({why}); its points count as not done",
                      file=sys.stderr)
            continue
        keys.update(frame["key"].to_list())
    return keys


def read_results(folder: str | Path):
    """Every finished point of a results folder, one row per key, sorted by key (polars)."""
    import polars as pl

    folder = Path(folder)
    files = chunk_files(folder)
    if not files:
        raise SweepError(f"{folder}: no sweep results here (expected {CHUNK_PREFIX}*.parquet from 'pregate sweep')")
    frames = []
    for f in files:
        chunk, why = _read_chunk(f)
        if chunk is None:
            raise SweepError(f"{f} is unreadable ({why}): rerun the sweep that wrote it with "
                             f"the same -o {folder} (it sets the file aside and simulates its points again), "
                             "or delete the file")
        frames.append(_schema_fix(chunk))
    frame = pl.concat(frames, how="diagonal_relaxed")
    return frame.unique("key", keep="first", maintain_order=True).sort("key")


def compact(folder: str | Path, min_files: int = 8) -> None:
    """Merge many small chunks into one. Safe if interrupted: the reader drops duplicate keys."""
    files = chunk_files(folder)
    if len(files) < min_files:
        return
    frame = read_results(folder)
    target = write_chunk(folder, frame.to_dicts())
    for f in files:
        if f != target:
            f.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- running a sweep


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


class _Writer:
    """Buffers finished rows and writes a chunk at most every FLUSH_SECONDS, and on close."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.rows: list[dict] = []
        self.last = time.monotonic()
        self.written = 0

    def add(self, rows: list[dict]) -> None:
        self.rows.extend(rows)
        if time.monotonic() - self.last >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            write_chunk(self.folder, self.rows)
            self.written += len(self.rows)
            self.rows = []
        self.last = time.monotonic()


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


def _write_manifest(results: Path, plan: Plan) -> None:
    """``sweep.json``: the grid of the latest run, for people and for reports (atomic)."""
    data = {"format": SWEEP_FORMAT, "source": plan.spec.source, **plan.spec.to_dict(), "points": len(plan.points)}
    tmp = results / f".sweep.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, results / "sweep.json")


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


def parse_list(text: str, kind: type = str) -> list:
    """``a,b,c`` -> ['a', 'b', 'c'] (ints for int fields, true/false for bools)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if kind is int:
        try:
            return [int(t) for t in items]
        except ValueError:
            raise SweepError(f"'{text}': expected whole numbers separated by commas") from None
    if kind is bool:
        table = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}
        try:
            return [table[t.lower()] for t in items]
        except KeyError:
            raise SweepError(f"'{text}': expected true/false values separated by commas") from None
    return items


def field_kind(name: str) -> type:
    kind = _type_name(SETTINGS_FIELDS[name])
    return {"int": int, "bool": bool}.get(kind, str)


def field_default(name: str):
    f = SETTINGS_FIELDS[name]
    return f.default if f.default is not MISSING else None
