"""Speculation policies: which experts to start copying before their layer's router runs.

A policy is told, at every layer step, what the hardware knows at that moment
(a :class:`LayerView`: the layer, the experts its router just chose, the
trace's ``ahead`` predictions when present) and answers with the experts to
prefetch, most wanted first. It learns online from the views it is shown;
nothing here knows about SimPy, so the live executor drives the same objects.

Only ``oracle`` reads the future, which the simulator puts into the view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from pregate.simulator.errors import SimulatorError
from pregate.simulator.policies.registry import SPECULATION, param


@dataclass
class LayerView:
    """What is known when layer ``layer`` of a forward pass has routed its tokens."""

    ls: int  # layer step counter (the simulation's clock in layers)
    group: int  # batch of sequences the pass belongs to
    pass_index: int
    layer: int  # global MoE layer (encoder layers first)
    remaining: int  # later MoE layers in this pass (prefetch targets are layer+1..layer+remaining)
    needed: Sequence[int]  # objects this layer step needs, request order
    ahead: dict[int, tuple[Sequence[int], Sequence[float]]] = field(default_factory=dict)
    future: Callable[[int], Sequence[int]] | None = None  # oracle only: objects layer+j will need
    tokens: int = 1


class SpeculationPolicy:
    """Base: predicts nothing."""

    name = "base"
    needs_ahead = False
    needs_future = False

    def __init__(self, layout=None, seed: int = 0):
        self.layout = layout

    def predict(self, view: LayerView) -> list[int]:
        return []


def require_ahead(policy_name: str, ahead_distance: int) -> None:
    """The one-line refusal for a policy that needs the trace's pre-gating signal."""
    if ahead_distance == 0:
        without = ", ".join(n for n in SPECULATION.names() if not SPECULATION.get(n).needs_ahead)
        raise SimulatorError(
            f"speculation '{policy_name}' needs the trace's 'ahead' column, which this trace lacks "
            f"(imported, or traced with --ahead 0); use one that does not ({without}) "
            "or record the model with 'pregate trace --ahead 3'"
        )


@SPECULATION.register("none")
class NoSpeculation(SpeculationPolicy):
    """On-demand loading only: every expert is fetched when its router asks for it."""


@SPECULATION.register("layer_minus_1")
class LayerMinusOne(SpeculationPolicy):
    """Pre-gated MoE: at layer L, prefetch what layer L+1's router picks from L's input."""

    needs_ahead = True

    def predict(self, view):
        if view.remaining < 1 or 1 not in view.ahead:
            return []
        return list(view.ahead[1][0])


@SPECULATION.register("multi_layer")
class MultiLayer(SpeculationPolicy):
    """Combine the ahead predictions made at L-2, L-1 and L for layer L+1, weighted by decay^(j-1).

    Predictions from further back are weaker but independent evidence; summing
    them ranks experts better than the last one alone when the budget (as many
    experts as the nearest prediction names) is smaller than the union.
    """

    needs_ahead = True

    @dataclass(frozen=True)
    class Params:
        decay: float = param(0.5, "weight of a prediction made j layers back: decay^(j-1)", low=0.0, high=1.0)

    def __init__(self, layout=None, seed: int = 0, decay: float = 0.5):
        super().__init__(layout, seed)
        self.decay = decay
        self.pass_index = -1
        self.scores: dict[int, dict[int, float]] = {}  # target layer -> obj -> score

    def predict(self, view):
        if view.pass_index != self.pass_index:
            self.pass_index, self.scores = view.pass_index, {}
        for j, (objs, scores) in view.ahead.items():
            table = self.scores.setdefault(view.layer + j, {})
            weight = self.decay ** (j - 1)
            for obj, score in zip(objs, scores):
                table[obj] = table.get(obj, 0.0) + weight * float(score)
        self.scores.pop(view.layer, None)
        if view.remaining < 1 or 1 not in view.ahead:
            return []
        budget = len(view.ahead[1][0])
        table = self.scores.get(view.layer + 1, {})
        ranked = sorted(table.items(), key=lambda item: (-item[1], item[0]))
        return [obj for obj, _ in ranked[:budget]]


@SPECULATION.register("adaptive")
class Adaptive(SpeculationPolicy):
    """Prefetch from every distance j whose prediction confidence clears a threshold,
    and tune each threshold online from the precision it achieves.

    Confidence is the expert's summed ahead probability per token. When the
    experts predicted at distance j turn out right less often than
    ``target_precision``, threshold j rises; when more often, it falls.
    """

    needs_ahead = True

    @dataclass(frozen=True)
    class Params:
        target_precision: float = param(0.7, "share of prefetches that should be used; the thresholds chase it",
                                        low=0.0, high=1.0)
        rate: float = param(0.05, "how far a threshold moves per layer step towards the target", low=0.0, high=1.0)

    def __init__(self, layout=None, seed: int = 0, target_precision: float = 0.7, rate: float = 0.05):
        super().__init__(layout, seed)
        self.target, self.rate = target_precision, rate
        self.threshold = {1: 0.0, 2: 0.3, 3: 0.5}
        self.pending: dict[tuple[int, int], dict[int, list[int]]] = {}

    def predict(self, view):
        made = self.pending.pop((view.pass_index, view.layer), None)
        if made:
            needed = set(view.needed)
            for j, objs in made.items():
                precision = sum(o in needed for o in objs) / len(objs)
                t = self.threshold.get(j, 0.5) + self.rate * (self.target - precision)
                self.threshold[j] = min(1.0, max(0.0, t))
        out: list[int] = []
        seen = set()
        for j, (objs, scores) in sorted(view.ahead.items()):
            if j > view.remaining:
                break
            limit = self.threshold.setdefault(j, 0.5) * view.tokens
            chosen = [o for o, s in zip(objs, scores) if s >= limit or j == 1 and not out and o == objs[0]]
            if chosen:
                self.pending.setdefault((view.pass_index, view.layer + j), {})[j] = chosen
            out += [o for o in chosen if o not in seen]
            seen.update(chosen)
        # forget predictions for passes that ended
        if len(self.pending) > 256:
            for key in [k for k in self.pending if k[0] < view.pass_index]:
                del self.pending[key]
        return out


@SPECULATION.register("transition")
class Transition(SpeculationPolicy):
    """Learn, per pair of consecutive layers, how often expert b follows expert a, and
    prefetch for L+1 the experts that most often followed L's choices.

    Counts come from layer steps as whole sets (with a batch, which token went
    where is not kept), so they are co-occurrence counts.
    """

    def __init__(self, layout=None, seed: int = 0):
        super().__init__(layout, seed)
        self.counts: dict[int, dict[int, dict[int, int]]] = {}  # layer -> a -> b -> n
        self.prev: tuple[int, int, Sequence[int]] | None = None

    def predict(self, view):
        if self.prev is not None and self.prev[0] == view.pass_index and self.prev[1] == view.layer - 1:
            table = self.counts.setdefault(view.layer, {})
            for a in self.prev[2]:
                row = table.setdefault(a, {})
                for b in view.needed:
                    row[b] = row.get(b, 0) + 1
        self.prev = (view.pass_index, view.layer, list(view.needed))
        if view.remaining < 1:
            return []
        table = self.counts.get(view.layer + 1)
        if not table:
            return []
        score: dict[int, int] = {}
        for a in view.needed:
            for b, n in table.get(a, {}).items():
                score[b] = score.get(b, 0) + n
        ranked = sorted(score.items(), key=lambda item: (-item[1], item[0]))
        return [b for b, _ in ranked[: len(view.needed)]]


@SPECULATION.register("eam")
class ExpertActivationMatrix(SpeculationPolicy):
    """MoE-Infinity's expert activation matrix (EAM) matching.

    Each batch of sequences builds a (layers x experts) matrix of how many
    tokens went to each expert. Finished matrices are kept (the most recent
    ``history``); at layer L the current matrix is compared (cosine) with them,
    and the experts the best match used most at layer L+1 are prefetched, mixed
    with the current batch's own counts (its earlier decode steps).
    """

    @dataclass(frozen=True)
    class Params:
        history: int = param(32, "finished batches' matrices kept to match against", low=1)

    def __init__(self, layout=None, seed: int = 0, history: int = 32):
        super().__init__(layout, seed)
        n_layers = layout.n_layers
        width = int(layout.experts.max())
        self.base = layout.base
        self.shape = (n_layers, width)
        self.history: list[np.ndarray] = []
        self.limit = history
        self.group = None
        self.current = np.zeros(self.shape)

    def predict(self, view):
        if view.group != self.group:
            if self.group is not None and self.current.any():
                self.history.append(self.current / max(1.0, self.current.sum()))
                self.history = self.history[-self.limit:]
            self.group, self.current = view.group, np.zeros(self.shape)
        base = self.base[view.layer]
        for obj in view.needed:
            self.current[view.layer, obj - base] += 1
        if view.remaining < 1:
            return []
        target = view.layer + 1
        row = self.current[target] / max(1.0, self.current[target].sum())
        if self.history:
            flat = self.current.ravel()
            norm = np.linalg.norm(flat) or 1.0
            sims = [float(h.ravel() @ flat) / ((np.linalg.norm(h) or 1.0) * norm) for h in self.history]
            best = self.history[int(np.argmax(sims))]
            row = row + best[target] / max(1e-12, best[target].sum())
        if not row.any():
            return []
        order = np.lexsort((np.arange(len(row)), -row))
        budget = len(view.needed)
        tbase = self.base[target]
        width = int(self.layout.experts[target])
        return [int(tbase + e) for e in order[:budget] if row[e] > 0 and e < width]


@SPECULATION.register("oracle")
class Oracle(SpeculationPolicy):
    """Knows the future: prefetches exactly what the next ``depth`` layers will need."""

    needs_future = True

    @dataclass(frozen=True)
    class Params:
        depth: int = param(3, "later layers whose experts are prefetched", low=1)

    def __init__(self, layout=None, seed: int = 0, depth: int = 3):
        super().__init__(layout, seed)
        self.depth = depth

    def predict(self, view):
        out: list[int] = []
        for j in range(1, min(self.depth, view.remaining) + 1):
            out += [int(o) for o in view.future(j)]
        return out
