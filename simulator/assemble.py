"""One place that builds the cache and planner of a setting, for every driver.

Why: the fast replay, the timed run and the executor must start from the same
cache (same size, same pinned experts, same caching policy objects) and the
same planner options, or their decisions drift apart. The simulator's
``Simulation`` and the executor's runtime both call :func:`make_cache` and
:func:`planner_options`; only the planner class differs (a trace's stream,
or the live model's growing one).
"""

from __future__ import annotations

from pregate.simulator.cache import ExpertCache
from pregate.simulator.errors import SimulatorError
from pregate.simulator.policies import BUFFERING, CACHING


def make_cache(layout, capacity: int, settings, stream=None) -> tuple[ExpertCache, object]:
    """The cache for ``settings`` (``capacity`` experts, pinned ones placed) and its buffering object."""
    cache_cls = CACHING.get(settings.cache_policy)
    buffering = BUFFERING.get(settings.buffering)()
    pinned = buffering.pinned(layout, stream, capacity, settings.seed)
    if buffering.static:
        capacity = len(pinned)  # slots left over by whole layers stay unused: nothing is copied after warm-up
    per_layer = settings.per_layer
    if pinned and per_layer:
        if not buffering.all_resident:
            raise SimulatorError(f"buffering '{settings.buffering}' pins experts in one global cache; "
                                 "drop --per-layer")
        per_layer = False  # every expert resident: nothing is ever evicted, so no partition matters
    cache = ExpertCache(layout, capacity, lambda: cache_cls(layout=layout, seed=settings.seed), per_layer=per_layer,
                        pinned=pinned)
    return cache, buffering


def planner_options(settings, buffering) -> dict:
    """Keyword arguments of the planner that follow from the settings and the buffering scheme."""
    return dict(cpu_misses=buffering.cpu_misses, admit_cpu_misses=buffering.admit_cpu_misses,
                max_prefetch=settings.max_prefetch, future_for_cache=CACHING.get(settings.cache_policy).needs_future)
