"""Offloaded inference of a real model: Hugging Face MoE families and pregate's small MoE.

Each MoE block keeps its router (it runs normally, on the device); only its
experts module is replaced by :class:`OffloadedExperts`, which takes the
router's decision, asks the runtime for the experts (the simulator's planner
and cache decide hits, misses, prefetches and evictions), and computes each
chosen expert with the weights in its device slot. The arithmetic per expert
is the model's own (same functions, same order of accumulation), so greedy
generation gives exactly the tokens of the all-resident model in the same dtype.

The request stream the planner sees is built as the model runs
(:class:`LiveStream`, planned by :class:`LivePlanner`, which is the
simulator's ``Planner``): per MoE layer step, the distinct experts in order of
first appearance (tokens, then best first within top-k), like a trace's
stream. Pre-gating (the ``ahead`` signal) is computed live: layer L applies
the routers of layers L+1..L+J to its own router input, as Pre-gated MoE does,
and the picks are scored by :func:`pregate.simulator.pregating.ahead_tables`,
the function a trace's stream is built with, so both rank candidates alike.
Policies that read the future (``belady``, ``oracle``) need a trace.
"""

from __future__ import annotations

from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from pregate.executor.device import ExecutorError
from pregate.executor.store import ExpertSpec, HostStore, gated_spec, smallmoe_spec, switch_spec
from pregate.simulator.planner import Planner
from pregate.simulator.pregating import ahead_tables
from pregate.simulator.stream import NEVER, Layout
from pregate.traces import StackMeta
from pregate.traces.schema import DEFAULT_AHEAD


class LiveStream:
    """A request stream that grows while the model runs: :class:`~pregate.simulator.stream.RequestStream`'s
    fields as plain lists, appended to one layer step at a time.

    Only what the planner reads is kept. No request has a known next use
    (``NEVER``): a live model has no future, which is why policies that read it
    are refused.
    """

    def __init__(self, layout: Layout, ahead_distance: int):
        self.layout = layout
        self.meta = SimpleNamespace(ahead_distance=ahead_distance)
        self.ls_req_start, self.req_obj, self.req_tokens, self.req_next = [0], [], [], []
        self.ls_layer, self.ls_pass, self.ls_tokens = [], [], []
        self.pass_group, self.pass_ls_start = [], [0]
        self.ahead = {j: ([0], [], []) for j in range(1, ahead_distance + 1)}

    def begin_pass(self, group: int, n_layers: int) -> None:
        self.pass_group.append(group)
        self.pass_ls_start.append(len(self.ls_layer) + n_layers)

    def add_step(self, layer: int, objs: list[int], tokens: list[int], n_tokens: int,
                 ahead: dict[int, tuple[list[int], list[float]]] | None = None) -> int:
        ls = len(self.ls_layer)
        self.ls_layer.append(layer)
        self.ls_pass.append(len(self.pass_group) - 1)
        self.ls_tokens.append(n_tokens)
        self.req_obj += objs
        self.req_tokens += tokens
        self.req_next += [NEVER] * len(objs)
        self.ls_req_start.append(len(self.req_obj))
        for j, (starts, a_obj, a_score) in self.ahead.items():
            if ahead and j in ahead:
                a_obj += ahead[j][0]
                a_score += ahead[j][1]
            starts.append(len(a_obj))
        return ls


class LivePlanner(Planner):
    """The simulator's planner over a :class:`LiveStream` (the layer steps are added as the model runs).

    Everything but the stream is :class:`~pregate.simulator.planner.Planner`'s own:
    the same state, options and :meth:`~pregate.simulator.planner.Planner.plan`.
    """

    def __init__(self, layout: Layout, cache, speculation, cpu_misses: bool = False, max_prefetch: int = 0,
                 future_for_cache: bool = False, ahead_distance: int = DEFAULT_AHEAD,
                 admit_cpu_misses: bool = False):
        if future_for_cache or speculation.needs_future:
            name = speculation.name if speculation.needs_future else "belady"
            raise ExecutorError(f"policy '{name}' reads the future, which a live model does not have; "
                                "execute a trace (--trace) to use it")
        self.ahead_distance = ahead_distance if speculation.needs_ahead else 0
        super().__init__(LiveStream(layout, self.ahead_distance), cache, speculation, cpu_misses=cpu_misses,
                         max_prefetch=max_prefetch, admit_cpu_misses=admit_cpu_misses)

    def begin_pass(self, group: int, n_layers: int) -> None:
        self.stream.begin_pass(group, n_layers)

    def add_step(self, layer: int, objs: list[int], tokens: list[int], n_tokens: int,
                 ahead: dict[int, tuple[list[int], list[float]]] | None = None) -> int:
        return self.stream.add_step(layer, objs, tokens, n_tokens, ahead)


class OffloadedExperts(nn.Module):
    """Stands in for one MoE block's experts module; the router's output comes in as arguments."""

    def __init__(self, session: "LiveSession", stack: str, layer: int, kind: str):
        super().__init__()
        self.session, self.stack, self.layer, self.kind = session, stack, layer, kind

    def forward(self, hidden_states, a, b, keep=None):
        if self.kind == "switch":  # (N, 1, E) one-hot dispatch mask with capacity drops zeroed, (N, 1) weights
            ids = a.argmax(dim=-1)
            valid = a.sum(dim=-1) > 0
            weights = b
        else:  # (N, k) expert ids and gate weights; the small MoE adds a capacity mask
            ids, weights, valid = a, b, keep
        return self.session.layer(self, hidden_states, ids, weights, valid)

    def extra_repr(self) -> str:
        return f"stack={self.stack}, layer={self.layer}, offloaded"


def _find_blocks(loaded):
    """(site, parent module holding .experts) per MoE layer, for the supported layouts."""
    adapter = loaded.adapter
    model = loaded.model
    out = []
    for site in adapter.sites():
        if adapter.family == "switch":
            stack = model.encoder if site.stack == "encoder" else model.decoder
            parent = stack.block[site.block].layer[-1].mlp
        elif adapter.family == "pregate_moe":
            parent = model.layers[site.block].mlp
        else:
            layer = adapter._layers()[site.block]
            parent = getattr(layer, "mlp", None) or getattr(layer, "block_sparse_moe", None)
        out.append((site, parent))
    return out


def expert_spec_for(loaded) -> tuple[ExpertSpec, str]:
    adapter = loaded.adapter
    blocks = _find_blocks(loaded)
    experts = blocks[0][1].experts
    cfg = loaded.model.config
    if adapter.family == "switch":
        first = experts["expert_0"]
        return switch_spec(cfg.d_model, first.wi.weight.shape[0], first.act), "switch"
    if adapter.family == "pregate_moe":
        return smallmoe_spec(cfg.d_model, cfg.d_ff), "smallmoe"
    if not (hasattr(experts, "gate_up_proj") and hasattr(experts, "down_proj")):
        raise ExecutorError(
            f"{adapter.family}: this transformers version keeps experts as separate modules; the executor "
            "needs the stacked gate_up_proj/down_proj layout of transformers 5"
        )
    if getattr(experts, "is_transposed", False) or not getattr(experts, "is_concatenated", True) \
            or getattr(experts, "has_bias", False):
        raise ExecutorError(f"{adapter.family}: unsupported expert layout (transposed, interleaved or biased)")
    _, two_ff, d_model = experts.gate_up_proj.shape
    return gated_spec(d_model, two_ff // 2, experts.act_fn), "gated"


def live_layout(loaded) -> tuple[Layout, dict]:
    desc_stacks = {}
    for site in loaded.adapter.sites():
        entry = desc_stacks.setdefault(site.stack, [0])
        entry[0] += 1
    stacks = {name: StackMeta(desc_stacks[name][0], loaded.adapter.num_experts(), loaded.adapter.top_k())
              for name in ("encoder", "decoder") if name in desc_stacks}
    layout = Layout.from_meta(SimpleNamespace(stacks=stacks))
    offset, first = {}, 0
    for name in ("encoder", "decoder"):
        if name in stacks:
            offset[name] = first
            first += stacks[name].moe_layers
    return layout, offset


class LiveSession:
    """Connects the offloaded experts modules of one model to the runtime."""

    def __init__(self, loaded, spec: ExpertSpec, kind: str, layout: Layout, offset: dict):
        self.loaded = loaded
        self.adapter = loaded.adapter
        self.spec = spec
        self.kind = kind
        self.layout = layout
        self.offset = offset
        self.sites = {(s.stack, s.layer): s for s in self.adapter.sites()}
        self.n_layers = {stack: sum(1 for s in self.sites if s[0] == stack) for stack in offset}
        self.runtime = None
        self.planner: LivePlanner | None = None
        self.group = 0
        self.top_k = self.adapter.top_k()
        self.recording = None  # a TraceRecording (--record-trace), whose router hooks skip our own predictions

    def extract(self, store: HostStore, device: torch.device) -> None:
        """Move every expert's weights into the host store and put the wrappers in place."""
        base = self.layout.base
        for site, parent in _find_blocks(self.loaded):
            experts = parent.experts
            g = self.offset[site.stack] + site.layer
            for e in range(self.layout.experts[g]):
                obj = int(base[g]) + e
                if self.kind == "switch":
                    m = experts[f"expert_{e}"]
                    store.put(obj, {"wi": m.wi.weight, "wo": m.wo.weight})
                elif self.kind == "smallmoe":
                    store.put(obj, {"w_in": experts.w_in[e], "w_out": experts.w_out[e]})
                else:
                    store.put(obj, {"gate_up_proj": experts.gate_up_proj[e], "down_proj": experts.down_proj[e]})
            parent.experts = OffloadedExperts(self, site.stack, site.layer, self.kind)
        self.loaded.model.to(device)

    # ---- one MoE layer ------------------------------------------------------------------
    def _ahead(self, stack: str, layer: int, hidden: torch.Tensor) -> dict:
        planner = self.planner
        J = min(planner.ahead_distance, self.n_layers[stack] - 1 - layer)
        if J <= 0:
            return {}
        ids, probs = [], []
        with self.recording.paused() if self.recording is not None else nullcontext():
            for j in range(1, J + 1):
                i, p = self.adapter.predict(self.sites[(stack, layer + j)], hidden, self.top_k)
                ids.append(i)
                probs.append(p.float())
        # one entry per (distance, token, pick) in row order, scored and ranked by the
        # simulator's own pre-gating function (the one a trace's stream uses)
        ids_a = torch.stack(ids).cpu().numpy().astype(np.int64)  # (J, N, k)
        probs_a = torch.stack(probs).cpu().numpy()
        g = self.offset[stack] + layer
        dist = np.broadcast_to(np.arange(1, J + 1).reshape(J, 1, 1), ids_a.shape)
        obj = self.layout.base[g + dist] + ids_a
        tables = ahead_tables(np.zeros(ids_a.size, np.int64), dist.reshape(-1), obj.reshape(-1),
                              probs_a.reshape(-1), 1)
        return {j: (objs.tolist(), scores.tolist()) for j, (_, objs, scores) in tables.items()}

    @torch.no_grad()
    def layer(self, module: OffloadedExperts, hidden: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
              valid: torch.Tensor | None) -> torch.Tensor:
        runtime, planner = self.runtime, self.planner
        stack, layer = module.stack, module.layer
        g = self.offset[stack] + layer
        base = int(self.layout.base[g])
        n, k = ids.shape
        if layer == 0:
            planner.begin_pass(self.group, self.n_layers[stack])
        flat = ids.reshape(-1)
        if valid is not None:
            flat = torch.where(valid.reshape(-1), flat, -1)
        chosen = flat.tolist()  # the router's decision reaches the host (one sync per layer)
        counts: dict[int, int] = {}
        for e in chosen:
            if e >= 0:
                counts[e] = counts.get(e, 0) + 1
        objs = [base + e for e in counts]  # first appearance: tokens in order, best first within top-k
        ahead = self._ahead(stack, layer, hidden) if planner.ahead_distance else None
        ls = planner.add_step(g, objs, list(counts.values()), n, ahead)
        works = runtime.layer(ls)
        if not works:
            return torch.zeros_like(hidden)
        if k == 1 and len(works) == 1 and counts[works[0].obj - base] == n:
            # every token to one expert (a single token, say): no gather, no scatter. The sum of
            # the general path adds each product to zero, which leaves it unchanged
            return (runtime.compute(works[0], hidden) * weights.reshape(n, 1)).to(hidden.dtype)
        out = torch.zeros_like(hidden)
        if self.kind == "gated" and k > 1:
            # transformers' loop visits an expert's tokens by top-k position first, then token;
            # the same row order gives the same matmul results
            pos = torch.arange(n * k, device=flat.device)
            key = torch.where(flat >= 0, flat * (n * k) + (pos % k) * n + pos // k, torch.full_like(flat, -1))
            order = torch.argsort(key)
        else:  # tokens in order within each expert (Switch, the small MoE)
            order = torch.argsort(flat, stable=True)
        tok_all = order // k if k > 1 else order
        w_all = weights.reshape(-1)[order]
        start = sum(1 for e in chosen if e < 0)
        offsets = {}
        for e in sorted(counts):
            offsets[e] = (start, start + counts[e])
            start += counts[e]
        contrib = {}
        for work in works:
            e = work.obj - base
            a, b = offsets[e]
            idx = tok_all[a:b]
            y = runtime.compute(work, hidden[idx])
            contrib[e] = (idx, y * w_all[a:b, None])
        for e in sorted(contrib):  # the model's own order of accumulation: ascending expert id
            idx, y = contrib[e]
            out.index_add_(0, idx, y.to(out.dtype))
        return out
