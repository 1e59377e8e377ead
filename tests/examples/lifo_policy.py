"""A new caching policy in one file: registering it makes it a --cache-policy, a sweep value and a listing line."""

from collections import OrderedDict
from dataclasses import dataclass

from pregate.simulator.policies.caching import CachingPolicy
from pregate.simulator.policies.registry import CACHING, param


@CACHING.register("lifo")
class LIFO(CachingPolicy):
    """Last in, first out: evict the expert loaded most recently, passing over the ``skip`` newest"""

    @dataclass(frozen=True)
    class Params:
        skip: int = param(0, "newest evictable experts passed over before one is evicted", low=0)

    def __init__(self, layout=None, seed: int = 0, skip: int = 0):
        super().__init__(layout, seed)
        self.skip, self.order = skip, OrderedDict()

    def on_insert(self, obj, now, next_use):
        self.order[obj] = None

    def on_remove(self, obj):
        del self.order[obj]

    def victim(self, protected):
        free = [obj for obj in reversed(self.order) if obj not in protected]
        return free[min(self.skip, len(free) - 1)] if free else None
