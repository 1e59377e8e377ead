"""A checked sweep: every name and value of the grid verified, every point keyed.

A point's key is a hash of its full settings, the trace's content (the bytes of
its parts) and the hardware and runtime profiles' content. Results are keyed by
it, so a rerun skips finished points and a changed trace or profile is
simulated again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pregate.simulator.errors import SimulatorError
from pregate.simulator.pricing import require_expert_size
from pregate.simulator.settings import Settings, parse_cache_size
from pregate.simulator.sweep_grid import SETTINGS_FIELDS, SweepError, SweepSpec, resolve_trace

SWEEP_FORMAT = 1  # bump when the meaning of a stored point changes: every key changes with it


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
    for name, values in spec.policy_grid.items():
        if not values:
            raise SweepError(f"{where}: policy parameter '{name}' has no values; give it at least one")
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
        spec = SweepSpec(traces=spec.traces, grid=grid, source=spec.source, policy_grid=spec.policy_grid)
        axes = spec.axes()
    profiles = {}
    for name in dict.fromkeys(axes["profile"]):
        try:
            profiles[name] = load_profile(name)
        except SimulatorError as exc:
            raise SweepError(f"{where}: {exc}") from None
    from pregate.simulator.hosts import load_host

    for name in dict.fromkeys(axes["host"]):
        if name:
            try:
                load_host(name)  # an unknown or malformed host kind fails before any work
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
