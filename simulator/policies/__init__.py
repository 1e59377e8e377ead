"""Policies, one module per family, each registered by name with a decorator.

The policies are plain Python state machines with no SimPy in them: the
simulator's drivers and the live executor call the very same objects. They are
told what happens ("layer L of pass P needs experts X", "object O was
inserted") and answer questions ("which experts to prefetch", "whom to evict").
"""

from pregate.simulator.policies.registry import BUFFERING, CACHING, COMPRESSION, SPECULATION, Registry
from pregate.simulator.policies import buffering, caching, compression, speculation  # noqa: F401  (registers)
from pregate.simulator.policies import caching_next_use, caching_s3fifo  # noqa: F401  (registers)
from pregate.simulator.policies import learned  # noqa: F401,E402  (registers; needs speculation first)
from pregate.simulator.policies import placement  # noqa: F401,E402  (registers; after buffering)

__all__ = ["BUFFERING", "CACHING", "COMPRESSION", "SPECULATION", "Registry"]
