"""Buffering schemes: where an expert lives while it computes, and what a miss does.

A scheme shapes the cache the mechanism gets (its capacity and the experts
pinned in it before the first layer step) and whether a miss is copied to the
GPU or computed on the CPU. The placements (static and hybrid CPU/GPU) are in
:mod:`pregate.simulator.policies.placement`.
"""

from __future__ import annotations

from pregate.simulator.policies.registry import BUFFERING


class Buffering:
    name = "base"
    all_resident = False  # every expert lives on the GPU: no copies at all
    cpu_misses = False  # a missed expert is computed on the CPU instead of copied
    admit_cpu_misses = False  # a miss computed on the CPU is also copied into the cache in the background
    chooses_side = False  # each miss goes to the CPU or is copied, whichever finishes first (cost model)
    static = False  # the pinned experts are the whole cache: nothing is copied after warm-up
    needs_stream = False  # what it pins is counted on a trace's request stream
    note = ""  # what the placement was computed from, when the reader must know

    def capacity(self, requested: int, total_experts: int, max_needed: int) -> int:
        return requested

    def pinned(self, layout, stream, capacity: int, seed: int) -> list[int]:
        """Experts pinned on the GPU before the first layer step (never evicted, never copied again).

        ``stream`` is the trace's request stream, or None for a live model."""
        return []


@BUFFERING.register("cache")
class CacheBuffering(Buffering):
    """A GPU expert cache of the requested size; misses are copied in on demand."""


@BUFFERING.register("resident")
class Resident(Buffering):
    """All experts on the GPU (needs the memory): the all-resident bound as a setting."""

    all_resident = True

    def capacity(self, requested, total_experts, max_needed):
        return total_experts

    def pinned(self, layout, stream, capacity, seed):
        return list(range(layout.n_objects))


@BUFFERING.register("double_buffer")
class DoubleBuffer(Buffering):
    """Room for two layers' experts: one computing while the next one's copy lands.

    The cache size setting is ignored; capacity is twice the most experts one
    layer step needs.
    """

    def capacity(self, requested, total_experts, max_needed):
        return min(total_experts, 2 * max_needed)


@BUFFERING.register("cpu_compute")
class CpuCompute(Buffering):
    """Fiddler-style: a missed expert runs on the CPU where its weights are, and only
    the activations cross PCIe; it is also copied into the GPU cache in the background
    (counted as bytes moved), so later requests hit. Prefetches still fill the cache."""

    cpu_misses = True
    admit_cpu_misses = True
