"""One number with where it comes from: the value type of hardware and runtime profiles.

Why every number carries its kind: a predicted latency is only as good as the
least certain input behind it, and a reader (or ``--uncertainty``) must be able
to tell a datasheet figure from a guess. Four kinds:

* ``measured``: timed on a named machine (the source says where, when, command);
* ``datasheet``: a vendor's specification (the source names it);
* ``derived``: computed from other numbers (the source gives formula and inputs);
* ``estimate``: reasoning without a measurement (the source gives the reasoning).

Estimates and derived values must carry a ``low``-``high`` range that holds
the value; measured and datasheet values may carry one (the spread of repeats).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pregate.simulator.errors import ProfileError

KINDS = ("measured", "datasheet", "derived", "estimate")
NEEDS_RANGE = ("derived", "estimate")
VALUE_KEYS = {"value", "unit", "kind", "source", "low", "high"}


@dataclass(frozen=True)
class Value:
    """A number in SI units with its kind, source and range (low == high == value when exact)."""

    value: float
    unit: str
    kind: str
    source: str
    low: float
    high: float

    @property
    def uncertain(self) -> bool:
        return self.low != self.value or self.high != self.value

    def at(self, corner: str) -> float:
        return {"low": self.low, "high": self.high, "value": self.value}[corner]


def kind_from_source(source: str) -> str:
    """The kind a legacy (schema /1) value had implicitly, read from its source text."""
    text = source.strip().lower()
    if text.startswith("measured by pregate calibrate") or text.startswith("measured"):
        return "measured"
    if text.startswith("estimate"):
        return "estimate"
    if "datasheet" in text or "specification" in text:
        return "datasheet"
    return "estimate"


# A legacy estimate had no range; it gets this one (documented in simulator/README.md).
LEGACY_ESTIMATE_RANGE = (0.5, 2.0)


def parse_value(where: str, key: str, raw, unit: str, *, allow_zero: bool = False, legacy: bool = False) -> Value:
    """Check one ``{ value, unit, kind, source, low, high }`` table; the first problem in one line."""
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: '{key}' must be a table {{ value = ..., unit = \"{unit}\", kind = \"...\", "
                           "source = \"...\" }")
    allowed = {"value", "unit", "source"} if legacy else VALUE_KEYS
    extra = set(raw) - allowed
    if extra:
        raise ProfileError(f"{where}: '{key}' has unknown field(s) {', '.join(sorted(extra))} "
                           f"(allowed: {', '.join(sorted(allowed))})")
    if "value" not in raw:
        raise ProfileError(f"{where}: '{key}' has no value")
    if raw.get("unit") != unit:
        raise ProfileError(f"{where}: '{key}' must have unit \"{unit}\", got {raw.get('unit')!r}")
    source = raw.get("source")
    if not isinstance(source, str) or not source.strip():
        raise ProfileError(f"{where}: '{key}' needs a source (datasheet, measurement, formula or reasoning)")
    value = _number(where, key, "value", raw["value"], allow_zero)
    if legacy:
        kind = kind_from_source(source)
        if unit == "count" and kind == "estimate":
            kind = "derived"  # a count is a fact of the setup
        if kind == "estimate":
            lo, hi = LEGACY_ESTIMATE_RANGE
            return Value(value, unit, kind, source, value * lo, value * hi)
        return Value(value, unit, kind, source, value, value)
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ProfileError(f"{where}: '{key}' needs kind = one of {', '.join(KINDS)}, got {kind!r}")
    if kind in NEEDS_RANGE and ("low" not in raw or "high" not in raw):
        raise ProfileError(f"{where}: '{key}' is {'an' if kind == 'estimate' else 'a'} {kind}: it needs low and high")
    low = _number(where, key, "low", raw.get("low", value), True)
    high = _number(where, key, "high", raw.get("high", value), True)
    if not low <= value <= high:
        raise ProfileError(f"{where}: '{key}' must have low <= value <= high, got {low!r} <= {value!r} <= {high!r}")
    if low <= 0 < value and not allow_zero:
        raise ProfileError(f"{where}: '{key}.low' must be positive")
    return Value(value, unit, kind, source, low, high)


def _number(where: str, key: str, field: str, raw, allow_zero: bool) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) or raw < 0 \
            or (raw == 0 and not allow_zero):
        what = "a non-negative" if allow_zero else "a positive"
        raise ProfileError(f"{where}: '{key}' must be {what} number, got {field} = {raw!r}")
    return float(raw)


def render_value(v: Value) -> str:
    """One TOML inline table for ``v`` (the form the profiles are written in)."""
    import json

    parts = [f"value = {num(v.value)}", f"unit = {json.dumps(v.unit)}", f"kind = {json.dumps(v.kind)}"]
    if v.uncertain or v.kind in NEEDS_RANGE:
        parts += [f"low = {num(v.low)}", f"high = {num(v.high)}"]
    parts.append(f"source = {json.dumps(v.source)}")
    return "{ " + ", ".join(parts) + " }"


def num(v: float) -> str:
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.6g}"
