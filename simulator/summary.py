"""One summary type for a run, simulated or measured: the figures every driver reports under one set of keys.

The simulator (``api.py``), the executor (``executor/runtime.py``) and validation
(``executor/validate.py``) all describe a run by the same quantities: what the
cache did (hits, late hits, misses, prefetches, evictions), the bytes copied,
and the decode-step latencies. Defining them once here means a key cannot mean
one thing in a simulated result and another in a measured one, which is what
validation compares. Each driver adds its own keys around these (the
simulator its pricing and memory fit, the executor its device and host phases)
and the JSON keeps exactly the keys it had.

Lives in ``simulator/`` because the executor may import the simulator and not
the other way round (see ARCHITECTURE.md's layering table).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class RunSummary:
    """The figures shared by a simulated and a measured run, in the order they are written.

    Latencies and ``tokens``/``steps`` are over decode steps (every pass when there are none):
    tokens/s and step latencies are decode figures; prefill passes are counted apart.
    ``hits`` are on time; ``late_hits`` were still in flight when needed.
    """

    requests: int
    tokens: int
    steps: int
    prefill_passes: int
    cache_capacity_experts: int
    hits: int
    late_hits: int
    misses: int
    bypasses: int
    prefetches: int
    prefetch_hits: int
    wasted_prefetches: int
    evictions: int
    bytes_moved: int
    total_s: float
    decode_s: float
    mean_step_latency_s: float
    p50_step_latency_s: float
    p95_step_latency_s: float
    tokens_per_s: float | None
    stall_s: float
    stall_share: float

    @classmethod
    def of_run(cls, steps: Sequence, counts, *, requests: int, late_hits: int, capacity: int, bytes_moved: int,
               total_s: float, stall_s: float) -> "RunSummary":
        """Build from per-pass records (anything with ``decode``, ``tokens``, ``latency_s``) and cache counts.

        All-resident runs need no special case: their cache starts with every expert pinned, so
        every request is counted as a hit by the cache itself.
        """
        decode = [s for s in steps if s.decode] or list(steps)
        lat = np.array([s.latency_s for s in decode]) if decode else np.zeros(1)
        tokens = int(sum(s.tokens for s in decode))
        decode_s = float(lat.sum())

        def count(name: str) -> int:
            return getattr(counts, name)

        total_hits = counts.hits
        return cls(
            requests=requests, tokens=tokens, steps=len(decode),
            prefill_passes=sum(1 for s in steps if not s.decode), cache_capacity_experts=capacity,
            hits=total_hits - late_hits, late_hits=late_hits, misses=count("misses"), bypasses=count("bypasses"),
            prefetches=count("prefetches"), prefetch_hits=count("prefetch_hits"),
            wasted_prefetches=count("wasted_prefetches"), evictions=count("evictions"), bytes_moved=int(bytes_moved),
            total_s=total_s, decode_s=decode_s, mean_step_latency_s=float(lat.mean()),
            p50_step_latency_s=float(np.percentile(lat, 50)), p95_step_latency_s=float(np.percentile(lat, 95)),
            tokens_per_s=tokens / decode_s if decode_s > 0 else None, stall_s=stall_s,
            stall_share=stall_s / total_s if total_s else 0.0,
        )

    @classmethod
    def from_dict(cls, summary: dict) -> "RunSummary":
        """Read the shared figures back from a summary dict (a driver's JSON)."""
        return cls(**{name: summary[name] for name in cls.keys()})

    @classmethod
    def keys(cls) -> list[str]:
        return list(cls.__dataclass_fields__)

    @property
    def prefetch_precision(self) -> float | None:
        """Share of prefetches that were used before being evicted (None without prefetches)."""
        return self.prefetch_hits / self.prefetches if self.prefetches else None

    def to_dict(self, after: str | None = None, until: str | None = None) -> dict:
        """The figures as ``{key: value}`` in field order; ``after``/``until`` cut out a run of
        consecutive keys (exclusive, inclusive) for a driver that interleaves its own keys."""
        names = self.keys()
        lo = names.index(after) + 1 if after else 0
        hi = names.index(until) + 1 if until else len(names)
        return {name: getattr(self, name) for name in names[lo:hi]}
