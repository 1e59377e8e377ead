"""What a timed run returns: per forward pass records and the run's totals.

Shared by the event-lean engine and the SimPy reference engine, so the two
return the same types and the tests can compare them field by field.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)  # one per forward pass: slots keep a long run's records small
class StepRecord:
    pass_index: int
    group: int
    step: int
    decode: bool
    tokens: int
    start_s: float
    latency_s: float
    compute_s: float
    stall_s: float
    dispatch_s: float
    hits: int
    late_hits: int
    misses: int
    prefetches: int


@dataclass
class TimedOutcome:
    total_s: float
    steps: list[StepRecord]
    late_hits: int
    bytes_moved: int
    cancelled_copies: int
    compute_s: float
    stall_s: float
    dispatch_s: float
    events: list = field(default_factory=list)  # timeline spans (name, track, start_s, dur_s)
    # which engine produced it (all give identical results, so equality ignores it)
    engine: str = field(default="", compare=False)
