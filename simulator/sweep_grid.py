"""A sweep's grid: traces and, per Settings field, the values to try; read from TOML or flags.

A :class:`SweepSpec` holds the traces and the axes; its points are the product
of the axes in a fixed order. Every value is checked against the Settings
field's type here, so a malformed config is refused in one line before any work.
"""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import MISSING, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from pregate.simulator.errors import SimulatorError
from pregate.simulator.settings import Settings

SAMPLE_PREFIX = "sample:"
DEFAULT_SAMPLE = "pregate-moe-tiny"

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
