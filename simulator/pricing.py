"""Refuse to price a trace whose experts have no known size.

Every cost the simulator reports (bytes moved, copy time, tokens per second,
the ratio to the bounds) scales with the bytes of one expert. An imported
trace without the model's shape records none, and priced as zero bytes it
would give a confident, meaningless answer (nothing moved, the bound reached).
So simulate, sweep and recommend stop here instead, and say how to supply it.
"""

from __future__ import annotations

from pregate.simulator.errors import SimulatorError
from pregate.traces import TraceMeta


def expert_size_known(meta: TraceMeta) -> bool:
    """Whether ``meta`` gives the bytes of one expert (per dtype, or its parameter count)."""
    return any(int(b) > 0 for b in (meta.bytes_per_expert or {}).values()) or int(meta.expert_params or 0) > 0


def require_expert_size(meta: TraceMeta, where: str = "the trace") -> None:
    """Raise the one-line refusal unless ``meta`` knows the size of its experts."""
    if expert_size_known(meta):
        return
    raise SimulatorError(
        f"{where} ({meta.model_id}) has no expert size, so every byte and time would be zero: describe the model "
        "with --model-config FILE (d_model, d_ff, activation; or --model NAME) when importing it, or price it as "
        "a known model with --price-as MODEL"
    )
