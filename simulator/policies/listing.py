"""The policies as text, generated from the registries: one section per family, one line per policy.

Every listing a user reads (``simulate --help``, the READMEs' tables) comes
from here or is checked against the registries by ``tests/test_policy_listings.py``,
so a new policy shows up everywhere once it is registered.
"""

from __future__ import annotations

from pregate.simulator.policies.registry import FAMILIES, describe, params_of, value_range

FLAGS = {"speculation": "--speculation", "cache_policy": "--cache-policy", "buffering": "--buffering",
         "compression": "--compression"}


def policy_listing() -> str:
    """``--help`` text: every registered policy with its help, parameters (--policy-arg) and needs."""
    width = 2 + max(len(name) for registry in FAMILIES.values() for name in registry.names())
    lines = ["policies (parameters are set with --policy-arg POLICY.PARAM=VALUE or PARAM=VALUE):"]
    for family, registry in FAMILIES.items():
        lines.append(f"  {FLAGS[family]}")
        for cls in registry.classes():
            lines.append(f"    {cls.name:<{width}}{describe(cls)}")
    return "\n".join(lines)


def parameter_table() -> str:
    """Markdown rows ``| policy | parameter | default | range | what it does |`` for the README."""
    rows = ["| policy | parameter | default | range | what it does |", "| --- | --- | --- | --- | --- |"]
    for registry in FAMILIES.values():
        for cls in registry.classes():
            for f in params_of(cls):
                span = value_range(f)
                rows.append(f"| `{cls.name}` | `{f.name}` | {f.default} | {span} | {f.metadata['help']} |")
    return "\n".join(rows)
