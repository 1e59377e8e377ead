"""Eviction by predicted next use: evict the expert expected to be needed last.

Why: Belady's MIN evicts the object whose next request lies furthest ahead and
closes most of the gap LRU leaves on MoE decode. Routing is cyclic (a token
walks the layers in order), so an expert can only be used when its layer comes
round again, and whether it is used then is a probability that the past
predicts well: an expert the last token used is likelier to be used by the
next (routing is sticky), and some experts are simply popular. This policy
estimates, per expert, the chance ``p`` that it is used at its layer's next
visit, from two online counts per expert (used at the next visit after a
visit where it was used, and after one where it was not), each shrunk towards
its layer's pooled rate. With visits of its layer every ``g`` layer steps
(measured) and the next one ``d`` layer steps away, its expected next use is
``d + g (1 - p) / p`` layer steps away (a geometric number of missed visits);
the victim is the expert with the largest, ties to the least recently used.
MoE-Infinity's activation-aware priority and HybriMoE's scores weigh the same
two signals (frequency, recency) by hand; this weighs them by what they
predicted so far.

The policy sees an expert's use only when it goes through the cache (a hit or
a demand insert); bypassed and CPU-computed experts are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from pregate.simulator.policies.caching import CachingPolicy
from pregate.simulator.policies.registry import CACHING, param


@CACHING.register("next-use")
class PredictedNextUse(CachingPolicy):
    """Evict the largest expected next use, from per-expert reuse statistics learned online."""

    @dataclass(frozen=True)
    class Params:
        prior: float = param(2.0, "pseudo-visits pulling an expert's reuse rate towards its layer's", low=0.0)

    def __init__(self, layout=None, seed: int = 0, prior: float = 2.0):
        super().__init__(layout, seed)
        self.prior = prior
        self.n_layers = layout.n_layers if layout is not None else 1
        self.layer_of = layout.obj_layer if layout is not None else None
        base = layout.base.tolist() if layout is not None else [0]
        width = layout.experts.tolist() if layout is not None else [1]
        self.members = [list(range(b, b + w)) for b, w in zip(base, width)]
        self.step = 0
        self.cur = -1
        self.last_visit = [-1] * self.n_layers  # layer step of each layer's latest visit
        self.gap = [float(self.n_layers)] * self.n_layers  # layer steps between visits (running mean)
        self.visits = [0] * self.n_layers
        self.used_now: set[int] = set()
        self.prev_used: list[set[int]] = [set() for _ in range(self.n_layers)]
        # per expert: [uses after a used visit, such visits, uses after an unused visit, such visits]
        self.stats: dict[int, list[int]] = {}
        self.pooled = [[0, 0, 0, 0] for _ in range(self.n_layers)]
        self.last_use: dict[int, int] = {}
        self.cached: set[int] = set()
        self.tick = 0

    # ---- learning -----------------------------------------------------------
    def _close_visit(self) -> None:
        layer = self.cur
        if layer < 0:
            return
        prev, now = self.prev_used[layer], self.used_now
        if self.visits[layer] > 1:  # a previous visit to compare with
            pool = self.pooled[layer]
            for obj in self.members[layer]:
                s = self.stats.get(obj)
                if s is None:
                    s = self.stats[obj] = [0, 0, 0, 0]
                k = 0 if obj in prev else 2
                used = obj in now
                s[k] += used
                s[k + 1] += 1
                pool[k] += used
                pool[k + 1] += 1
        self.prev_used[layer] = now
        self.used_now = set()

    def on_layer(self, layer, now):
        self._close_visit()
        self.step += 1
        if self.last_visit[layer] >= 0:
            self.gap[layer] += 0.1 * ((self.step - self.last_visit[layer]) - self.gap[layer])
        self.last_visit[layer] = self.step
        self.visits[layer] += 1
        self.cur = layer

    def _used(self, obj):
        self.tick += 1
        self.last_use[obj] = self.tick
        if self.layer_of is None or self.layer_of[obj] == self.cur:
            self.used_now.add(obj)

    def on_hit(self, obj, now, next_use):
        self._used(obj)

    def on_insert(self, obj, now, next_use):
        self.cached.add(obj)
        self.tick += 1
        self.last_use[obj] = self.tick
        if self.layer_of is None or self.layer_of[obj] == self.cur:
            self.used_now.add(obj)

    def on_remove(self, obj):
        self.cached.discard(obj)
        self.last_use.pop(obj, None)

    # ---- prediction ---------------------------------------------------------
    def p_next(self, obj: int) -> float:
        """Chance that ``obj`` is used at its layer's next visit."""
        layer = self.layer_of[obj] if self.layer_of is not None else 0
        k = 0 if obj in self.prev_used[layer] or (layer == self.cur and obj in self.used_now) else 2
        pool = self.pooled[layer]
        layer_rate = (pool[k] + 0.5) / (pool[k + 1] + 1.0)
        s = self.stats.get(obj)
        if s is None:
            return layer_rate
        return (s[k] + self.prior * layer_rate) / (s[k + 1] + self.prior)

    def expected_next_use(self, obj: int) -> float:
        layer = self.layer_of[obj] if self.layer_of is not None else 0
        gap = self.gap[layer]
        since = self.step - self.last_visit[layer] if self.last_visit[layer] >= 0 else 0
        d = max(1.0, gap - since) if layer != self.cur else gap
        p = max(self.p_next(obj), 1e-3)
        return d + gap * (1.0 - p) / p

    def victim(self, protected):
        best, best_key = None, None
        for obj in self.cached:
            if obj in protected:
                continue
            key = (self.expected_next_use(obj), -self.last_use[obj], obj)
            if best_key is None or key > best_key:
                best, best_key = obj, key
        return best
