"""Whether a simulated point fits the GPU: dense weights + expert cache + a working margin.

Why a margin: a run needs GPU memory besides weights and experts (the CUDA
context, 0.3-0.5 GB; activations; the KV cache at small batch; allocator
fragmentation). A point that fits only without it would not run, so it is
flagged ``over_memory`` everywhere it is shown and left out of "best" unless
the user asks for it (``--include-over-memory``).
"""

from __future__ import annotations

MARGIN_FIXED = 0.5e9  # bytes: estimate, CUDA context plus allocator slack
MARGIN_SHARE = 0.08  # of the GPU's memory: estimate, activations, KV cache, fragmentation


def working_margin(gpu_memory: float) -> float:
    """0.5 GB + 8% of the GPU's memory (an estimate; recommend --margin overrides it there)."""
    return MARGIN_FIXED + MARGIN_SHARE * gpu_memory


def over_memory(peak_bytes: float, gpu_memory: float, margin: float | None = None) -> bool:
    """True when dense weights + cache (``peak_bytes``) + the margin exceed the GPU's memory."""
    return peak_bytes + (working_margin(gpu_memory) if margin is None else margin) > gpu_memory
