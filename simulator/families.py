"""Placement families: where the experts live and run, in the words users argue in.

Why a module of its own: ``recommend`` answers by family, and the report
tables where each family wins; both read the family from the buffering
scheme's own attributes in the registry, so a new placement is classified
without an edit here.
"""

from __future__ import annotations

GPU_CACHE, STATIC, HYBRID = "GPU expert cache with prefetch", "static CPU placement", "hybrid (GPU cache + CPU compute)"
FAMILIES = (GPU_CACHE, STATIC, HYBRID)
SHORT = {GPU_CACHE: "GPU cache", STATIC: "static", HYBRID: "hybrid"}


def placement_family(buffering: str) -> str | None:
    """The family of a buffering scheme: a GPU cache (misses copied), a static placement (pinned experts,
    the rest on the CPU), a hybrid (a cache whose misses may run on the CPU); None for all-resident."""
    from pregate.simulator.policies import BUFFERING

    cls = BUFFERING.get(buffering)
    if cls.all_resident:
        return None
    if not cls.cpu_misses:
        return GPU_CACHE
    # a static placement never copies a missed expert in; a hybrid's cache keeps filling
    return HYBRID if (cls.admit_cpu_misses or cls.chooses_side) else STATIC


def placements() -> dict[str, list[str]]:
    """The registered buffering schemes that run experts on the CPU, by family (read from the registry)."""
    from pregate.simulator.policies import BUFFERING

    out: dict[str, list[str]] = {STATIC: [], HYBRID: []}
    for name in BUFFERING.names():
        family = placement_family(name)
        if family in out:
            out[family].append(name)
    return out
