"""A registry per policy family, filled by a decorator where each policy is defined.

Why a decorator: a new policy touches one place, its own class, and becomes
available to the CLI, the sweep, every listing and the parametrised invariant
tests at once. The class carries everything the rest of pregate needs to know
about it:

* ``name`` (given to the decorator) and ``help`` (the first line of its docstring);
* ``Params``: a small frozen dataclass of its tunable parameters, each made with
  :func:`param` (default, help, range); they are set as ``--policy-arg NAME=VALUE``
  and as sweep keys (:mod:`pregate.simulator.policies.params`) and reach the
  constructor as keyword arguments;
* what it needs: ``needs_ahead`` (the trace's pre-gating column), ``needs_future``
  (the simulator's knowledge of future requests), ``needs_predictor`` (a trained model);
* optionally ``fast_replay`` (given to the decorator): the name of the loop in
  :mod:`pregate.simulator.replay` that counts it without the general planner.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Callable, TypeVar

from pregate.simulator.errors import unknown_name

T = TypeVar("T")


def param(default, help: str, *, low: float | None = None, high: float | None = None):
    """One policy parameter: its default, what it does, and the range a value must fall in (inclusive)."""
    return field(default=default, metadata={"help": help, "low": low, "high": high})


@dataclass(frozen=True)
class NoParams:
    """A policy without tunable parameters."""


class Registry:
    """Name -> policy class for one family (speculation, caching, buffering, compression)."""

    def __init__(self, family: str):
        self.family = family
        self._classes: dict[str, type] = {}

    def register(self, name: str, *, fast_replay: str | None = None) -> Callable[[type[T]], type[T]]:
        """Register a class as policy ``name``; ``fast_replay`` names its loop in ``replay.py`` (not inherited)."""

        def add(cls: type[T]) -> type[T]:
            if name in self._classes:
                raise ValueError(f"{self.family} policy '{name}' registered twice")
            cls.name = name
            cls.family = self.family
            cls.fast_replay = fast_replay
            cls.help = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split()).rstrip(".") or name
            if "Params" not in cls.__dict__ and not hasattr(cls, "Params"):
                cls.Params = NoParams
            self._classes[name] = cls
            return cls

        return add

    def names(self) -> list[str]:
        return list(self._classes)

    def classes(self) -> list[type]:
        return list(self._classes.values())

    def get(self, name: str) -> type:
        try:
            return self._classes[name]
        except KeyError:
            raise unknown_name(f"{self.family} policy", name, self.names()) from None


def value_range(f) -> str:
    """A parameter's allowed values as text: ``0.0 to 1.0``, ``>= 1``, ``<= 4`` or ``any``."""
    low, high = f.metadata.get("low"), f.metadata.get("high")
    if low is not None and high is not None:
        return f"{low} to {high}"
    if low is not None:
        return f">= {low}"
    return f"<= {high}" if high is not None else "any"


def params_of(cls) -> list:
    """The dataclass fields of a policy's parameters (empty for none)."""
    return list(fields(getattr(cls, "Params", NoParams)))


def needs_of(cls) -> list[str]:
    """What a policy needs beyond the requests: ``ahead``, ``future``, ``predictor``."""
    return [what for what in ("ahead", "future", "predictor") if getattr(cls, f"needs_{what}", False)]


def describe(cls) -> str:
    """One line for listings: help, parameters with defaults, needs, fast replay."""
    parts = [cls.help]
    ps = params_of(cls)
    if ps:
        parts.append("parameters: " + ", ".join(f"{p.name}={p.default if p.default is not MISSING else '?'}"
                                                 for p in ps))
    needs = needs_of(cls)
    if needs:
        parts.append("needs: " + ", ".join(needs))
    return "; ".join(parts)


SPECULATION = Registry("speculation")
CACHING = Registry("caching")
BUFFERING = Registry("buffering")
COMPRESSION = Registry("compression")
FAMILIES = {"speculation": SPECULATION, "cache_policy": CACHING, "buffering": BUFFERING, "compression": COMPRESSION}
