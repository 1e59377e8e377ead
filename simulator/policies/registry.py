"""A registry per policy family, filled by a decorator where each policy is defined.

Why a decorator: a new policy touches one place, its own class, and becomes
available to the CLI, the sweep and the parametrised invariant tests at once.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from pregate.simulator.errors import unknown_name

T = TypeVar("T")


class Registry:
    """Name -> policy class for one family (speculation, caching, buffering, compression)."""

    def __init__(self, family: str):
        self.family = family
        self._classes: dict[str, type] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def add(cls: type[T]) -> type[T]:
            if name in self._classes:
                raise ValueError(f"{self.family} policy '{name}' registered twice")
            cls.name = name
            self._classes[name] = cls
            return cls

        return add

    def names(self) -> list[str]:
        return list(self._classes)

    def get(self, name: str) -> type:
        try:
            return self._classes[name]
        except KeyError:
            raise unknown_name(f"{self.family} policy", name, self.names()) from None

    def create(self, name: str, **kwargs):
        return self.get(name)(**kwargs)


SPECULATION = Registry("speculation")
CACHING = Registry("caching")
BUFFERING = Registry("buffering")
COMPRESSION = Registry("compression")
