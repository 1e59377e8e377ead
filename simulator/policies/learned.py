"""``learned`` speculation: prefetch what a trained softmax regression predicts (see simulator/predictor.py).

The model is either loaded (``--predictor P``, made by ``pregate predictor
train``) or trained here on the simulated trace's own training split: a
seeded half of its batch groups. Either way it predicts only for forward
passes of held-out sequences; the training sequences are still simulated
(their layer steps run without speculation, like ``none``), and the result's
``speculation_note`` states the split. A predictor trained on another trace
(same model shape) predicts for every sequence.

At each layer step it rebuilds, from the views it is shown, the features the
model was trained on (simulator/predictor.py): the static tables' rows for
this step's top-1 and set, its own online tables (counted over every layer
step it has seen, and within the current batch group), the previous pass's
experts at the target layer (the previous token's, at batch 1) and ``ahead``
when the model uses it. A layer step's top-1 is its first request (at batch
1 the router's first choice); with a batch, its set is the union over its
tokens (the model was trained per token). It prefetches the top experts for
layer l+1 (as many as this step needs) and, for l+2 and l+3, only experts
whose predicted chance of being chosen is at least ``far_confidence``.
``confidence`` holds each returned expert's predicted chance, for policies
of cost that want it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pregate.simulator.errors import SimulatorError
from pregate.simulator.policies.params import kwargs_for
from pregate.simulator.policies.registry import SPECULATION, param
from pregate.simulator.policies.speculation import SpeculationPolicy
from pregate.simulator.predictor import DISTANCES, Predictor, candidate_features, trace_fingerprint, train

_TRAINED: dict[tuple, Predictor] = {}  # (fingerprint, batch, seed) -> predictor trained on that trace
_LOADED: dict[tuple, Predictor] = {}  # (path, mtime) -> loaded predictor

MISSING = ("speculation 'learned' needs a trained predictor: pass --predictor P "
           "(make one with 'pregate predictor train TRACE -o P')")


def _source_trace(source):
    from pregate.traces import Trace, open_trace

    if source is None:
        return None
    return source if isinstance(source, Trace) else open_trace(source)


def load_predictor(path: str) -> Predictor:
    from pathlib import Path

    p = Path(path)
    key = (str(p.resolve()), p.stat().st_mtime_ns if p.is_file() else 0)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = Predictor.load(p)
    return _LOADED[key]


@SPECULATION.register("learned")
class Learned(SpeculationPolicy):
    """Softmax regression per target distance j = 1..3 over recent routing (and ``ahead`` if present)."""

    needs_predictor = True  # loaded from --predictor, or trained on the trace's training split

    @dataclass(frozen=True)
    class Params:
        far_confidence: float = param(0.6, "least predicted chance for an expert two or more layers ahead to be "
                                           "prefetched", low=0.0, high=1.0)

    def __init__(self, layout=None, seed: int = 0, predictor: Predictor | None = None,
                 heldout_groups: set[int] | None = None, far_confidence: float = 0.6, note: str = ""):
        super().__init__(layout, seed)
        if predictor is None:
            raise SimulatorError(MISSING)
        self.predictor = predictor
        self.heldout = heldout_groups
        self.far_confidence = far_confidence
        self.note = note
        # the planner passes 'ahead' only to a policy that says it needs it
        self.needs_ahead = predictor.use_ahead
        self.stacks = list(layout.stacks)
        self.in_stack = layout.layer_in_stack.tolist()
        self.experts = layout.experts.tolist()
        self.base = layout.base.tolist()
        self.top_k = layout.top_k.tolist()
        self.pass_index = -1
        self.group = None
        self.current: dict[int, np.ndarray] = {}
        self.last: dict[int, dict[int, np.ndarray]] = {}
        self.confidence: dict[int, float] = {}
        self.top1: dict[int, int] = {}  # this pass: layer -> its first request's expert
        # online tables, (source layer, target layer) -> counts: top-1 -> top-1 over the run and within
        # the current group, set -> set over the run
        self.counts_top1: dict[tuple[int, int], np.ndarray] = {}
        self.counts_seq: dict[tuple[int, int], np.ndarray] = {}
        self.counts_set: dict[tuple[int, int], np.ndarray] = {}

    @classmethod
    def from_settings(cls, layout, settings, source=None) -> "Learned":
        """The policy for ``settings``: ``settings.predictor`` loaded, or trained on ``source``'s training split."""
        trace = _source_trace(source)
        stacks = {s: (int((np.array(layout.stacks) == s).sum()), int(layout.experts[layout.stacks.index(s)]))
                  for s in dict.fromkeys(layout.stacks)}
        if settings.predictor:
            predictor = load_predictor(settings.predictor)
            predictor.check_shape(stacks, settings.predictor)
            same = trace is not None and trace_fingerprint(trace) == predictor.meta.get("trace_fingerprint")
            if not same:
                return cls(layout, settings.seed, predictor, None, **kwargs_for(cls, settings.policy_args),
                           note=f"predictor {settings.predictor} trained on another trace: predicts for every sequence")
            train_seqs = predictor.train_seqs
        else:
            if trace is None:
                raise SimulatorError(MISSING)
            key = (trace_fingerprint(trace), settings.batch_size, settings.seed)
            if key not in _TRAINED:
                if len(_TRAINED) > 4:
                    _TRAINED.clear()
                _TRAINED[key] = train(trace, seed=settings.seed, batch_size=settings.batch_size)
            predictor = _TRAINED[key]
            train_seqs = predictor.train_seqs
        import polars as pl

        seqs = np.sort(trace.scan().select(pl.col("seq").unique()).collect().get_column("seq").to_numpy())
        groups = np.arange(len(seqs)) // settings.batch_size
        trained = np.isin(seqs, list(train_seqs))
        heldout = set(int(g) for g in np.unique(groups) if not trained[groups == g].any())
        n_held = int(np.isin(groups, list(heldout)).sum())
        note = (f"learned predictor trained on {int(trained.sum())} of {len(seqs)} sequences (seed "
                f"{predictor.meta.get('seed')}); it predicts only for the {n_held} held-out sequences, "
                "the others run without speculation")
        return cls(layout, settings.seed, predictor, heldout, note=note, **kwargs_for(cls, settings.policy_args))

    def _multi_hot(self, objs, gl: int) -> np.ndarray:
        out = np.zeros(self.experts[gl], np.float32)
        base = self.base[gl]
        for o in objs:
            out[o - base] = 1.0
        return out

    @staticmethod
    def _add(table: dict, key, pair: np.ndarray) -> None:
        if key in table:
            table[key] += pair
        else:
            table[key] = pair.copy()

    @staticmethod
    def _row(table: dict, key, src: int | np.ndarray, width: int) -> np.ndarray:
        c = table.get(key)
        if c is None:
            return np.zeros(width, np.float32)
        row = c[src] if isinstance(src, int) else src @ c
        total = float(row.sum())
        return row / total if total > 0 else row

    def predict(self, view):
        gl = view.layer
        if view.pass_index != self.pass_index:
            if self.current:
                self.last.setdefault(self.group, {}).update(self.current)
            if view.group != self.group:
                self.counts_seq = {}
            self.pass_index, self.group, self.current, self.top1 = view.pass_index, view.group, {}, {}
        self.confidence = {}
        if not view.needed:
            return []
        mine = self._multi_hot(view.needed, gl)
        first = int(view.needed[0]) - self.base[gl]
        self.current[gl], self.top1[gl] = mine, first
        stack = self.stacks[gl]
        for j in range(1, DISTANCES + 1):  # learn the online tables from this pass's earlier layers
            src = gl - j
            if src not in self.current or self.stacks[src] != stack:
                continue
            one_src = np.zeros(self.experts[src], np.float32)
            one_src[self.top1[src]] = 1.0
            one_dst = np.zeros(self.experts[gl], np.float32)
            one_dst[first] = 1.0
            top_pair = np.outer(one_src, one_dst)
            self._add(self.counts_top1, (src, gl), top_pair)
            self._add(self.counts_seq, (src, gl), top_pair)
            self._add(self.counts_set, (src, gl), np.outer(self.current[src], mine))
        if view.remaining < 1 or (self.heldout is not None and view.group not in self.heldout):
            return []
        layer = self.in_stack[gl]
        previous = self.last.get(view.group, {})
        prev_first = self.top1.get(gl - 1) if layer >= 1 else None
        out: list[int] = []
        for j in range(1, min(DISTANCES, view.remaining) + 1):
            t = gl + j
            if t >= len(self.stacks) or self.stacks[t] != stack:
                break
            model = self.predictor.weights.get((stack, j, layer + j))
            if model is None:
                continue
            e = self.experts[t]
            set_row = mine @ model["set"]
            prev_t = previous.get(t)
            ahead_j = None
            if self.predictor.use_ahead and j in view.ahead:
                ahead_j = self._multi_hot(view.ahead[j][0], t)
            x = candidate_features(
                model["top1"][first], set_row / max(1e-9, float(set_row.sum())),
                model["prev"][prev_first] if prev_first is not None else np.zeros(e, np.float32),
                self._row(self.counts_top1, (gl, t), first, e), self._row(self.counts_seq, (gl, t), first, e),
                self._row(self.counts_set, (gl, t), mine, e),
                prev_t if prev_t is not None else np.zeros(e, np.float32), ahead_j, self.predictor.use_ahead)
            p = self.predictor.predict_proba(stack, j, layer + j, x[None])[0]
            chance = np.minimum(1.0, p * self.top_k[t])
            order = np.lexsort((np.arange(e), -chance))
            base = self.base[t]
            if j == 1:
                picks = order[: len(view.needed)]
            else:
                picks = [i for i in order[: self.top_k[t]] if chance[i] >= self.far_confidence]
            for i in picks:
                obj = int(base + i)
                if obj not in self.confidence:
                    self.confidence[obj] = float(chance[i])
                    out.append(obj)
        return out
