"""A model made from a trace: shapes from its metadata, routing forced from its rows.

Any trace can be executed this way, including imported ones without the
``ahead`` column: no checkpoint is needed, because what the executor measures
(copies, expert kernels, dense work, the router's read-back) depends on the
shapes and on which experts each layer step uses, not on the weights' values.

Per MoE layer step of the trace's request stream the model runs:

* the dense blocks between two MoE layers (``blocks / moe_layers`` of them, as
  the simulator's cost model counts): RMS norm, QKV projection, attention over
  the step's context, output projection, norm, a dense FFN sized so that a
  block holds the trace's ``dense_bytes_per_layer``;
* the router (a real matmul, softmax and top-k whose result is read back to
  the host, as a live model must) whose choice is then replaced by the trace's;
* each requested expert on as many tokens as the trace routed to it, with the
  weights from its device slot.

Weights are seeded random values; activations are renormalised every block.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pregate.executor.store import ExpertSpec, gated_spec, switch_spec
from pregate.simulator.costs import DTYPE_BYTES
from pregate.traces import TraceMeta

HEAD_DIM = 64


def spec_for_meta(meta: TraceMeta) -> ExpertSpec:
    act_name = (meta.activation or "relu").lower()
    gated = "gated" in act_name or "glu" in act_name
    if gated:
        return gated_spec(meta.d_model, meta.d_ff, F.silu)
    act = F.gelu if "gelu" in act_name else F.relu
    return switch_spec(meta.d_model, meta.d_ff, act)


def blocks_per_layer(meta: TraceMeta) -> int:
    """Transformer blocks per MoE layer, as the simulator's cost model counts them."""
    total_moe = sum(s.moe_layers for s in meta.stacks.values())
    blocks = int(meta.extra.get("blocks", 0) or 0) if isinstance(meta.extra, dict) else 0
    if meta.stacks and all(s.block_indices for s in meta.stacks.values()):
        blocks = sum(max(s.block_indices) + 1 for s in meta.stacks.values())
    return max(1, round(blocks / total_moe)) if blocks else 1


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class SyntheticModel:
    """Dense weights per MoE layer, routers, and scratch tensors for one trace's shapes."""

    def __init__(self, meta: TraceMeta, device: torch.device, dtype: torch.dtype, max_tokens: int,
                 max_ctx: int, seed: int = 0):
        self.meta = meta
        self.device = device
        self.dtype = dtype
        self.spec = spec_for_meta(meta)
        d = meta.d_model
        self.d = d
        self.heads = max(1, d // HEAD_DIM)
        self.head_dim = d // self.heads
        trace_bytes = DTYPE_BYTES.get(meta.dtype, 4)
        dense_params = meta.dense_bytes_per_layer / trace_bytes
        self.ffn = max(0, int((dense_params - 4 * d * d) // (2 * d)))
        self.blocks = blocks_per_layer(meta)
        gen = torch.Generator(device=device).manual_seed(seed)

        def rand(*shape):
            return (torch.randn(*shape, generator=gen, device=device) * shape[-1] ** -0.5).to(dtype)

        self.layers = []
        experts = [s.experts for name in ("encoder", "decoder") if name in meta.stacks
                   for s in [meta.stacks[name]] for _ in range(s.moe_layers)]
        self.top_k = [s.top_k for name in ("encoder", "decoder") if name in meta.stacks
                      for s in [meta.stacks[name]] for _ in range(s.moe_layers)]
        for n_experts in experts:
            blocks = []
            for _ in range(self.blocks):
                block = {"qkv": rand(3 * d, d), "o": rand(d, d)}
                if self.ffn:
                    block["w1"], block["w2"] = rand(self.ffn, d), rand(d, self.ffn)
                blocks.append(block)
            self.layers.append({"blocks": blocks, "router": rand(n_experts, d)})
        max_tokens = max(1, max_tokens)
        self.x0 = torch.randn(max_tokens, d, generator=gen, device=device).to(dtype)
        self.index = torch.arange(max_tokens, device=device)
        self.gate = torch.full((max_tokens, 1), 0.5, device=device, dtype=dtype)
        ctx = max(1, min(max_ctx, 8192))
        self.kv = torch.randn(2, max_tokens, self.heads, ctx, self.head_dim, generator=gen, device=device).to(dtype)

    def dense_bytes(self) -> int:
        per = sum(t.numel() * t.element_size() for layer in self.layers for b in layer["blocks"] for t in b.values())
        return int(per)

    def start(self, tokens: int) -> torch.Tensor:
        return self.x0[:tokens].clone()

    def dense(self, layer: int, x: torch.Tensor, decode: bool, ctx: int) -> torch.Tensor:
        """The dense blocks before MoE layer ``layer``: attention over ``ctx`` and a dense FFN."""
        T = x.shape[0]
        H, Dh = self.heads, self.head_dim
        for block in self.layers[layer]["blocks"]:
            h = _rms(x)
            q, k, v = F.linear(h, block["qkv"]).view(T, 3, H, Dh).unbind(1)
            if decode:  # one query per sequence against its context
                c = max(1, min(self.kv.shape[3], math.ceil(ctx / T)))
                att = F.scaled_dot_product_attention(q.view(T, H, 1, Dh), self.kv[0, :T, :, :c], self.kv[1, :T, :, :c])
            else:  # the prompt attends to itself, causally
                qh, kh, vh = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
                att = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True).squeeze(0).transpose(0, 1)
            x = x + F.linear(att.reshape(T, -1), block["o"])
            if self.ffn:
                x = x + F.linear(F.relu(F.linear(_rms(x), block["w1"])), block["w2"])
            x = _rms(x)
        return x

    def route(self, layer: int, x: torch.Tensor) -> list:
        """The router runs and its choice reaches the host; the trace's routing is used instead."""
        probs = torch.softmax(F.linear(x, self.layers[layer]["router"]).float(), dim=-1)
        return torch.topk(probs, self.top_k[layer], dim=-1).indices.tolist()
