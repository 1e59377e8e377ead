"""Placements: which experts live on the GPU, and where a missed expert runs.

The questions users of llama.cpp, Fiddler and KTransformers argue about,
written as buffering schemes over the one cache mechanism:

* ``static-layers``: every expert of the last ``capacity // experts_per_layer``
  MoE layers of each stack is pinned on the GPU before the first layer step;
  the first layers' experts stay on the host and run on the CPU
  (llama.cpp's ``--n-cpu-moe N``);
* ``static-hot``: the ``capacity`` experts that received the most tokens on a
  seeded training split of the trace's sequences (the learned predictor's
  split rule) are pinned; the rest run on the CPU (Fiddler's and
  KTransformers' placement);
* ``cpu-or-fetch``: a normal cache of that size under the caching policy;
  each miss is computed on the CPU or copied in, whichever the cost model
  says finishes first given its token count and the link's queue (Fiddler's
  rule). A miss computed on the CPU is also copied into the cache in the
  background when the link is idle on the model clock, so the cache fills
  where copies cost nothing.

Static placements move no bytes after the pre-fill (the pre-fill is warm-up,
not decode traffic): their whole capacity is pinned, the caching policy
manages no slot, and prefetches find no slot to use.

The cpu-or-fetch choice runs on a model clock computed from precomputed
numbers (the cost tables and the planner's own decisions), like the prefetch
gate, so the fast replay, the timed run and the executor choose identically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pregate.simulator.errors import SimulatorError
from pregate.simulator.policies.buffering import Buffering
from pregate.simulator.policies.registry import BUFFERING


def static_layer_split(n_layers: int, experts_per_layer: int, capacity: int) -> tuple[list[int], list[int]]:
    """(CPU layers, GPU layers) of one stack of ``n_layers`` MoE layers when ``capacity``
    experts fit on the GPU: the last ``capacity // experts_per_layer`` layers are on the GPU,
    the first ones on the CPU (llama.cpp's ``--n-cpu-moe N`` with N the CPU layers' count)."""
    if n_layers < 0 or experts_per_layer < 1 or capacity < 0:
        raise SimulatorError(f"a layer split needs n_layers >= 0, experts_per_layer >= 1 and capacity >= 0 "
                             f"(got {n_layers}, {experts_per_layer}, {capacity})")
    on_gpu = min(n_layers, capacity // experts_per_layer)
    return list(range(n_layers - on_gpu)), list(range(n_layers - on_gpu, n_layers))


def _stack_shares(layout, capacity: int) -> dict[str, int]:
    """The capacity split evenly between the stacks (encoder first gets the remainder)."""
    names = list(dict.fromkeys(layout.stacks))
    return {name: capacity // len(names) + (1 if i < capacity % len(names) else 0) for i, name in enumerate(names)}


def static_layer_objects(layout, capacity: int) -> list[int]:
    """Object ids pinned by ``static-layers``: every expert of each stack's GPU layers."""
    pinned: list[int] = []
    if not layout.n_layers:
        return pinned
    shares = _stack_shares(layout, capacity)
    for stack, share in shares.items():
        layers = [g for g, s in enumerate(layout.stacks) if s == stack]
        per_layer = int(layout.experts[layers[0]])
        _, gpu = static_layer_split(len(layers), per_layer, share)
        for i in gpu:
            g = layers[i]
            base = int(layout.base[g])
            pinned += range(base, base + int(layout.experts[g]))
    return pinned


def training_groups(stream, seed: int) -> np.ndarray:
    """The stream's training batch groups: the learned predictor's split rule
    (:func:`pregate.simulator.predictor.split_sequences`: whole groups, shuffled with
    ``seed``, half of them) applied to the groups the stream already has."""
    from pregate.simulator.predictor import split_sequences

    return split_sequences(np.unique(stream.pass_group), batch_size=1, seed=seed)


def hot_objects(stream, capacity: int, seed: int) -> tuple[list[int], str]:
    """The ``capacity`` experts with the most routed tokens on the training split (ties: lower id),
    and a note saying what they were counted on."""
    n = stream.layout.n_objects
    capacity = min(capacity, n)
    groups = training_groups(stream, seed)
    if len(groups):
        passes = np.isin(stream.pass_group, groups)
        ls_train = passes[stream.ls_pass]
        req_train = np.repeat(ls_train, np.diff(stream.ls_req_start))
        note = (f"static-hot: expert use counted on {len(groups)} of {len(np.unique(stream.pass_group))} "
                f"sequence groups (training split, seed {seed})")
    else:
        req_train = np.ones(stream.n_requests, dtype=bool)
        note = ("static-hot: the trace has one sequence group, so expert use was counted on the whole trace "
                "(the placement has seen the requests it serves)")
    objs = np.asarray(stream.req_obj)[req_train]
    tokens = np.asarray(stream.req_tokens)[req_train]
    counts = np.bincount(objs, weights=tokens, minlength=n)
    order = np.lexsort((np.arange(n), -counts))  # most tokens first, lower id on ties
    return sorted(order[:capacity].tolist()), note


class Placement(Buffering):
    """A placement: misses run on the CPU; what it pins is filled in before the first layer step."""

    cpu_misses = True


class StaticPlacement(Placement):
    """Pinned experts only: the cache is what was placed, no slot is left to the caching policy."""

    static = True


@BUFFERING.register("static-layers")
class StaticLayers(StaticPlacement):
    """The experts of the last capacity // experts_per_layer MoE layers of each stack pinned on
    the GPU, the first layers' experts run on the CPU (llama.cpp --n-cpu-moe N)."""

    def pinned(self, layout, stream, capacity: int, seed: int) -> list[int]:
        return static_layer_objects(layout, capacity)


@BUFFERING.register("static-hot")
class StaticHot(StaticPlacement):
    """The capacity most used experts (tokens on a seeded training split of the sequences) pinned
    on the GPU, the rest run on the CPU (Fiddler's and KTransformers' placement)."""

    needs_stream = True

    def pinned(self, layout, stream, capacity: int, seed: int) -> list[int]:
        if stream is None:
            raise SimulatorError("static-hot counts expert use on a trace's training split, which a live model "
                                 "does not have; execute a trace (--trace), or use static-layers")
        objs, self.note = hot_objects(stream, capacity, seed)
        return objs


@BUFFERING.register("cpu-or-fetch")
class CpuOrFetch(Placement):
    """A cache under the caching policy; each miss runs on the CPU or is copied in, whichever the
    cost model says finishes first (Fiddler's rule); CPU-run misses are copied in when the link is idle."""

    admit_cpu_misses = True
    chooses_side = True


# ---- the cpu-or-fetch choice ----------------------------------------------------------------

@dataclass(frozen=True)
class SideTiming:
    """The numbers the choice needs, precomputed by the code that builds the planner."""

    expert_cpu: list[float]  # [n tokens] -> CPU seconds for one expert, with activation copies
    expert_gpu: list[float]  # [n tokens] -> GPU seconds for one expert
    copy_s: float  # one demand copy
    engines: int  # copies that run at once
    step_s: list[float]  # [ls] seconds from ls's router result to ls+1's, without stalls


class SideClock:
    """A model clock: when the link's queue and the CPU pool clear, and the current router time.

    Each miss goes where it finishes first: on the CPU at ``max(cpu, now) + expert_cpu[n]``,
    or copied at ``max(link, now) + copy`` and then computed in ``expert_gpu[n]``. Ties go to
    the CPU (no bytes moved)."""

    def __init__(self, timing: SideTiming):
        self.t = timing
        self.now = 0.0
        self.link = 0.0
        self.cpu = 0.0
        self._done = 0.0

    def sides(self, tokens: int) -> tuple[float, float]:
        """(finish on the CPU, finish after a copy) for a miss of ``tokens`` tokens, now."""
        t = self.t
        cpu = (self.cpu if self.cpu > self.now else self.now) + t.expert_cpu[tokens]
        copy = (self.link if self.link > self.now else self.now) + t.copy_s + t.expert_gpu[tokens]
        return cpu, copy

    def choose_cpu(self, tokens: int) -> bool:
        """Decide one miss and book it on the side chosen."""
        cpu, copy = self.sides(tokens)
        if cpu <= copy:
            self.cpu = cpu
            self._done = max(self._done, cpu)
            return True
        self._book_copy()
        self._done = max(self._done, copy)
        return False

    def link_idle(self) -> bool:
        return self.link <= self.now

    def _book_copy(self) -> None:
        start = self.link if self.link > self.now else self.now
        self.link = start + self.t.copy_s / self.t.engines

    def admitted(self) -> None:
        """A background copy of a CPU-run miss went out: it occupies the link."""
        self._book_copy()

    def end(self, ls: int) -> None:
        """Advance to the next router result: this step's work, or the last miss it waited for."""
        nxt = self.now + self.t.step_s[ls]
        self.now = nxt if nxt > self._done else self._done
        self._done = 0.0


def side_timing(stream, costs, copy_engines: int, demand_dtype: str) -> SideTiming:
    """The choice's numbers from the cost tables (step times as the prefetch gate computes them)."""
    from pregate.simulator.gate import timing_from_costs

    step = timing_from_costs(stream, costs, copy_engines, demand_dtype, demand_dtype).step_s
    return SideTiming(list(costs.expert_cpu), list(costs.expert_gpu), float(costs.copy[demand_dtype]),
                      max(1, int(copy_engines)), step)
