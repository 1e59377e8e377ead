"""Policy parameters set from outside: ``--policy-arg NAME=VALUE`` and sweep keys, checked against the classes.

A name is ``POLICY.PARAM`` (``least-stale`` is a policy name with a dash, so the
dot is the separator) or a bare ``PARAM`` that exactly one of the candidate
policies has. Values are given as text (the command line) or as TOML/Python
values and are coerced to the parameter's type and checked against its range.
Everything wrong is refused in one line that names the valid parameters.

The resolved form is a sorted tuple of ``("policy.param", value)`` pairs: what
:class:`~pregate.simulator.settings.Settings` stores, so two spellings of the
same setting are the same point.
"""

from __future__ import annotations

from pregate.simulator.errors import SimulatorError
from pregate.simulator.policies.registry import FAMILIES, params_of, value_range


def all_params(classes=None) -> dict[str, tuple[type, object]]:
    """``"policy.param" -> (class, field)`` for the given policy classes (default: every registered one)."""
    if classes is None:
        classes = [cls for registry in FAMILIES.values() for cls in registry.classes()]
    out = {}
    for cls in classes:
        for f in params_of(cls):
            out[f"{cls.name}.{f.name}"] = (cls, f)
    return out


def _valid(candidates: dict) -> str:
    return ", ".join(candidates) if candidates else "none (the chosen policies have no parameters)"


def qualify(name: str, candidates: dict, where: str = "--policy-arg") -> str:
    """The ``policy.param`` that ``name`` means among ``candidates`` (see :func:`all_params`)."""
    name = name.strip()
    if name in candidates:
        return name
    if "." in name:
        everywhere = all_params()
        if name in everywhere:
            policy = name.rsplit(".", 1)[0]
            raise SimulatorError(f"{where} {name}: policy '{policy}' is not among the chosen policies; "
                                 f"choose it, or give one of: {_valid(candidates)}")
        raise SimulatorError(f"{where}: unknown parameter '{name}' (valid: {_valid(candidates)})")
    matches = [q for q in candidates if q.rsplit(".", 1)[1] == name]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise SimulatorError(f"{where}: parameter '{name}' is ambiguous ({', '.join(matches)}); give POLICY.{name}")
    elsewhere = [q for q in all_params() if q.rsplit(".", 1)[1] == name]
    if elsewhere:
        raise SimulatorError(f"{where}: parameter '{name}' belongs to {', '.join(elsewhere)}, not among the chosen "
                             f"policies (valid: {_valid(candidates)})")
    raise SimulatorError(f"{where}: unknown parameter '{name}' (valid: {_valid(candidates)})")


def coerce(qualified: str, f, value, where: str = "--policy-arg"):
    """``value`` (text or a TOML/Python value) as the parameter's type, inside its range."""
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    kind = kind.replace(" | None", "").replace("Optional[", "").rstrip("]")
    try:
        if kind == "bool":
            if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
                value = value.strip().lower() in ("true", "1", "yes")
            elif not isinstance(value, bool):
                raise ValueError
        elif kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and value != int(value)):
                raise ValueError
            value = int(value.strip()) if isinstance(value, str) else int(value)
        elif kind == "float":
            if isinstance(value, bool):
                raise ValueError
            value = float(value.strip()) if isinstance(value, str) else float(value)
        else:
            value = str(value)
    except ValueError:
        raise SimulatorError(f"{where} {qualified}: takes {'a whole number' if kind == 'int' else 'a ' + kind}, "
                             f"got {value!r} ({f.metadata['help']})") from None
    low, high = f.metadata.get("low"), f.metadata.get("high")
    if (low is not None and value < low) or (high is not None and value > high):
        raise SimulatorError(f"{where} {qualified}: {value} is outside {value_range(f)} ({f.metadata['help']})")
    return value


def split_assignment(text: str, where: str = "--policy-arg") -> tuple[str, str]:
    """``"NAME=VALUE"`` -> ``(NAME, VALUE)``, refusing anything else in one line."""
    name, sep, value = str(text).partition("=")
    if not sep or not name.strip() or not value.strip():
        raise SimulatorError(f"{where} '{text}' is not NAME=VALUE (e.g. --policy-arg multi_layer.decay=0.3)")
    return name.strip(), value.strip()


def chosen_classes(speculation: str, cache_policy: str, buffering: str, compression: str) -> list[type]:
    chosen = {"speculation": speculation, "cache_policy": cache_policy, "buffering": buffering,
              "compression": compression}
    return [FAMILIES[family].get(name) for family, name in chosen.items()]


def resolve(pairs, classes, where: str = "--policy-arg") -> tuple:
    """``(name, value)`` pairs as the sorted, typed ``("policy.param", value)`` tuple for ``classes``."""
    candidates = all_params(classes)
    out: dict[str, object] = {}
    for name, value in pairs:
        q = qualify(name, candidates, where)
        if q in out:
            raise SimulatorError(f"{where}: parameter {q} is given twice")
        out[q] = coerce(q, candidates[q][1], value, where)
    return tuple(sorted(out.items()))


def kwargs_for(cls, policy_args: tuple) -> dict:
    """The constructor keywords of ``cls`` from resolved ``policy_args`` (only its own)."""
    prefix = f"{cls.name}."
    return {q[len(prefix):]: v for q, v in policy_args if q.startswith(prefix)}
