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

# the axes: every Settings field but the policy parameters, which have their own axes (policy_grid)
SETTINGS_FIELDS = {f.name: f for f in fields(Settings) if f.name != "policy_args"}
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
    # policy parameter -> values, names as given (POLICY.PARAM or a bare PARAM); see policy_axes
    policy_grid: dict[str, list] = field(default_factory=dict)

    def axes(self) -> dict[str, list]:
        """Every Settings field with its values: the grid's, else the default alone."""
        out = {}
        for name, f in SETTINGS_FIELDS.items():
            out[name] = list(self.grid[name]) if name in self.grid else [f.default]
        return out

    def policy_axes(self) -> dict[str, list]:
        """The policy parameters' axes as ``"policy.param" -> typed values``, checked against the policies
        the grid chooses from (a bare name must belong to exactly one of them)."""
        if not self.policy_grid:
            return {}
        from pregate.simulator.policies.params import all_params, coerce, qualify
        from pregate.simulator.policies.registry import FAMILIES

        axes = self.axes()
        try:
            classes = [FAMILIES[family].get(name) for family in FAMILIES for name in dict.fromkeys(axes[family])]
            candidates = all_params(classes)
            out: dict[str, list] = {}
            for name, values in self.policy_grid.items():
                q = qualify(name, candidates, where=self.source)
                if q in out:
                    raise SimulatorError(f"{self.source}: policy parameter {q} is given twice")
                out[q] = [coerce(q, candidates[q][1], v, where=f"{self.source}:") for v in values]
        except SimulatorError as exc:
            raise SweepError(str(exc)) from None
        return out

    def settings(self) -> list[Settings]:
        """The product of all axes, in a fixed order, without duplicates.

        A policy parameter's axis multiplies only the points that choose its policy: a
        ``multi_layer.decay`` axis leaves the points with other speculation policies as they are.
        """
        axes, policy_axes = self.axes(), self.policy_axes()
        names = list(axes)
        seen, out = set(), []
        for combo in itertools.product(*(axes[n] for n in names)):
            chosen = dict(zip(names, combo))
            picked = {chosen[family] for family in ("speculation", "cache_policy", "buffering", "compression")}
            params = [q for q in policy_axes if q.rsplit(".", 1)[0] in picked]
            for values in itertools.product(*(policy_axes[q] for q in params)):
                s = Settings(**chosen, policy_args=tuple(zip(params, values)))
                if s not in seen:
                    seen.add(s)
                    out.append(s)
        return out

    def to_dict(self) -> dict:
        out = {"traces": list(self.traces), "grid": {k: list(v) for k, v in self.grid.items()}}
        if self.policy_grid:
            out["policy_args"] = {k: list(v) for k, v in self.policy_grid.items()}
        return out


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

    from pregate.simulator.policies.params import all_params

    params = list(all_params())
    valid = [*TRACE_KEYS, *SETTINGS_FIELDS]
    bare = list(dict.fromkeys(q.rsplit(".", 1)[1] for q in params))
    close = difflib.get_close_matches(key, valid + params + bare, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return SweepError(f"{where}: unknown key '{key}' (valid: {', '.join(valid)}; policy parameters: "
                      f"{', '.join(params)}){hint}")


def _policy_keys(key: str, value: Any) -> dict[str, Any] | None:
    """The policy-parameter axes a config key stands for, or None when it is not one.

    ``"multi_layer.decay" = [...]`` (a quoted dotted key), ``multi_layer.decay = [...]`` or a
    ``[multi_layer]`` table (both read as a table named after the policy), ``decay = [...]``
    (a bare name), or a ``[policy_args]`` table of any of these.
    """
    from pregate.simulator.policies.params import all_params

    known = all_params()
    policies = {q.rsplit(".", 1)[0] for q in known}
    bare = {q.rsplit(".", 1)[1] for q in known}
    if key == "policy_args" and isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_policy_keys(k, v) or {k: v})
        return out
    if isinstance(value, dict) and key in policies:
        return {f"{key}.{k}": v for k, v in value.items()}
    if key in known or key in bare:
        return {key: value}
    return None


def spec_from_mapping(data: dict, where: str = "sweep", base: Path | None = None) -> SweepSpec:
    """A SweepSpec from parsed TOML (or any mapping): Settings field names, lists as axes.

    Relative trace paths are taken relative to ``base`` (the config file's folder).
    ``sample:NAME`` names a shipped sample trace.
    """
    traces: list[str] = []
    grid: dict[str, list] = {}
    policy_grid: dict[str, list] = {}
    for key, value in data.items():
        if key in TRACE_KEYS:
            values = value if isinstance(value, list) else [value]
            for v in values:
                if not isinstance(v, str) or not v.strip():
                    raise SweepError(f"{where}: '{key}' takes trace folders (strings), got {v!r}")
                traces.append(v if v.startswith(SAMPLE_PREFIX) or base is None or Path(v).is_absolute()
                              else str(base / v))
            continue
        if key not in SETTINGS_FIELDS and (found := _policy_keys(key, value)) is not None:
            for name, v in found.items():
                if isinstance(v, dict):
                    raise SweepError(f"{where}: policy parameter '{name}' takes a value or a list of values")
                policy_grid[name] = v if isinstance(v, list) else [v]
            continue
        if key not in SETTINGS_FIELDS:
            if isinstance(value, dict):
                raise SweepError(f"{where}: unknown table [{key}]: a sweep config is flat, one key per Settings "
                                 f"field (a list of values is a grid axis)")
            raise _unknown_key(where, key)
        values = value if isinstance(value, list) else [value]
        grid[key] = [_coerce(key, v, where) for v in values]
    return SweepSpec(traces=traces, grid=grid, source=where, policy_grid=policy_grid)


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
