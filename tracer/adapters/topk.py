"""Shared adapter for decoder-only families with a softmax top-k router per MoE block.

Mixtral, Qwen2-MoE, Qwen3-MoE and OLMoE all put a ``...SparseMoeBlock`` with a
``gate`` (the router) and ``experts`` in some decoder layers. In transformers 5
the gate is a router module returning ``(logits, top-k weights, top-k ids)``;
in 4.x it is a plain ``nn.Linear`` returning logits and the block does the
softmax and top-k. Both are read here, so a family file only states its
config names and published shapes.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from pregate.tracer.adapters.base import ModelAdapter, RouterSite, Routing


class TopKRouterAdapter(ModelAdapter):
    # Config attribute holding the width of one routed expert's hidden layer.
    expert_ff_attr: ClassVar[str] = "intermediate_size"
    # Whether the chosen top-k weights are renormalised to sum to 1
    # (None: read config.norm_topk_prob).
    always_renormalise: ClassVar[bool | None] = None

    @classmethod
    def moe_blocks(cls, config) -> list[int]:
        """Decoder blocks that hold an MoE layer, from the config alone (Qwen's
        ``decoder_sparse_step`` and ``mlp_only_layers``; every block otherwise)."""
        step = getattr(config, "decoder_sparse_step", 1) or 1
        dense = set(getattr(config, "mlp_only_layers", None) or [])
        return [i for i in range(config.num_hidden_layers) if (i + 1) % step == 0 and i not in dense]

    @classmethod
    def summarize(cls, config) -> dict[str, Any]:
        d_model, d_ff = int(config.hidden_size), int(getattr(config, cls.expert_ff_attr))
        experts = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None) \
            or getattr(config, "n_routed_experts", None)
        return dict(experts=int(experts), top_k=int(config.num_experts_per_tok),
                    moe_layers=str(len(cls.moe_blocks(config))), d_model=d_model, d_ff=d_ff,
                    expert_params=3 * d_model * d_ff)

    def _layers(self):
        inner = getattr(self.model, "model", self.model)
        return inner.layers

    def sites(self) -> list[RouterSite]:
        found = []
        for block_index, layer in enumerate(self._layers()):
            block = getattr(layer, "mlp", None) or getattr(layer, "block_sparse_moe", None)
            if block is not None and hasattr(block, "gate") and hasattr(block, "experts"):
                found.append(RouterSite("decoder", len(found), block_index, block.gate))
        return found

    def renormalise(self) -> bool:
        if self.always_renormalise is not None:
            return self.always_renormalise
        return bool(getattr(self.config, "norm_topk_prob", False))

    def read_output(self, site: RouterSite, output: Any, hidden: torch.Tensor) -> Routing:
        if isinstance(output, tuple) and len(output) == 3:
            _logits, weights, ids = output
        else:  # transformers 4.x: the gate is a Linear and returns logits
            probs = torch.softmax(output.float(), dim=-1)
            weights, ids = torch.topk(probs, self.top_k(), dim=-1)
            if self.renormalise():
                weights = weights / weights.sum(dim=-1, keepdim=True)
        k = ids.shape[-1]
        ids = ids.reshape(-1, k)
        return Routing(ids.long(), weights.reshape(-1, k).float(), torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device))

    def router_logits(self, site: RouterSite, hidden: torch.Tensor) -> torch.Tensor:
        output = site.router(hidden.reshape(-1, hidden.shape[-1]))
        return output[0] if isinstance(output, tuple) else output

    def expert_shape(self) -> dict[str, Any]:
        c = self.config
        d_ff = int(getattr(c, self.expert_ff_attr))
        return {
            "d_model": int(c.hidden_size),
            "d_ff": d_ff,
            "activation": f"{c.hidden_act}-gated",
            "gating": "topk-softmax-renorm" if self.renormalise() else "topk-softmax",
            "expert_params": 3 * c.hidden_size * d_ff,
        }

    def top_k(self) -> int:
        return int(self.config.num_experts_per_tok)

    def num_experts(self) -> int:
        c = self.config
        return int(getattr(c, "num_local_experts", None) or getattr(c, "num_experts"))

    def num_blocks(self) -> int:
        return len(self._layers())
