"""DeepSeek-V2 and -V3 through Hugging Face: routed plus shared experts, group-limited routing.

Facts this adapter relies on (transformers 5.x, checked by the tests on tiny configs):
- the first ``first_k_dense_replace`` blocks have a dense MLP, the others a MoE
  block with ``gate`` (the router), ``experts`` (``n_routed_experts`` routed
  experts of width ``moe_intermediate_size``) and ``shared_experts`` (one MLP of
  width ``n_shared_experts * moe_intermediate_size`` that every token runs);
- the router returns ``(logits, weights, ids)`` with the top-k *not* sorted
  (``torch.topk(..., sorted=False)``) and the weights multiplied by
  ``routed_scaling_factor`` (2.5 in V3, 16 in V2), so weights can exceed 1;
- V2 scores with a softmax; ``topk_method="group_limited_greedy"`` first keeps the
  ``topk_group`` best of ``n_group`` expert groups (by their best expert). V3
  scores with a sigmoid plus a learned bias for the choice, keeps the groups with
  the best two-expert sums, and renormalises the chosen weights.

The trace stores the chosen experts best first and their weights divided by the
scaling factor (the router's own normalised weights, in [0, 1]); the factor is
in the metadata's ``extra``. Shared experts run for every token: they are
counted in ``dense_bytes_per_layer`` (always resident, priced as dense work),
never as routed experts.
"""

from __future__ import annotations

from typing import Any

import torch

from pregate.tracer.adapters.base import KnownVariant, RouterSite, Routing, register
from pregate.tracer.adapters.topk import TopKRouterAdapter


class _DeepseekAdapter(TopKRouterAdapter):
    expert_ff_attr = "moe_intermediate_size"

    @classmethod
    def moe_blocks(cls, config) -> list[int]:
        first = int(getattr(config, "first_k_dense_replace", 0) or 0)
        return list(range(first, config.num_hidden_layers))

    @classmethod
    def summarize(cls, config) -> dict[str, Any]:
        out = super().summarize(config)
        out["experts"] = int(config.n_routed_experts)
        out["shared_params"] = 3 * int(config.hidden_size) * int(config.moe_intermediate_size) * int(config.n_shared_experts)
        return out

    def num_experts(self) -> int:
        return int(self.config.n_routed_experts)

    def scale(self) -> float:
        return float(getattr(self.config, "routed_scaling_factor", 1.0) or 1.0)

    def _sorted(self, weights: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = ids.shape[-1]
        weights, ids = weights.reshape(-1, k).float() / self.scale(), ids.reshape(-1, k).long()
        order = torch.argsort(weights, dim=-1, descending=True, stable=True)
        return torch.gather(weights, 1, order), torch.gather(ids, 1, order)

    def read_output(self, site: RouterSite, output: Any, hidden: torch.Tensor) -> Routing:
        _logits, weights, ids = output
        weights, ids = self._sorted(weights, ids)
        return Routing(ids, weights.clamp(0.0, 1.0), torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device))

    def predict(self, site: RouterSite, hidden: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The later router's own choice (its group limit included), best first; beyond its
        top-k, the next experts by the router's score."""
        _logits, weights, ids = site.router(hidden.reshape(-1, hidden.shape[-1]))
        weights, ids = self._sorted(weights, ids)
        k = ids.shape[1]
        if width <= k:
            return ids[:, :width], weights[:, :width]
        scores = self.scores(site, hidden)
        rest = scores.scatter(1, ids, float("-inf"))
        more_w, more_i = torch.topk(rest, width - k, dim=-1)
        return torch.cat([ids, more_i], 1), torch.cat([weights, more_w.clamp(0.0, 1.0)], 1)

    def scores(self, site: RouterSite, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def expert_shape(self) -> dict[str, Any]:
        shape = super().expert_shape()
        shape["gating"] = self.gating()
        return shape

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        c = self.config
        out["extra"].update(
            shared_experts=int(c.n_shared_experts),
            shared_expert_params_per_layer=3 * int(c.hidden_size) * int(c.moe_intermediate_size) * int(c.n_shared_experts),
            routed_scaling_factor=self.scale(),
            n_group=getattr(c, "n_group", None),
            topk_group=getattr(c, "topk_group", None),
            dense_blocks=list(range(int(getattr(c, "first_k_dense_replace", 0) or 0))),
        )
        return out


@register
class DeepseekV2Adapter(_DeepseekAdapter):
    family = "deepseek_v2"
    model_types = ("deepseek_v2",)
    variants = (
        KnownVariant(
            "deepseek-ai/DeepSeek-V2-Lite",
            dict(vocab_size=102400, hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
                 num_hidden_layers=27, num_attention_heads=16, num_key_value_heads=16, n_shared_experts=2,
                 n_routed_experts=64, num_experts_per_tok=6, first_k_dense_replace=1, kv_lora_rank=512,
                 q_lora_rank=None, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
                 topk_method="greedy", n_group=1, topk_group=1, norm_topk_prob=False, routed_scaling_factor=1.0,
                 max_position_embeddings=163840),
            15.7e9,
            aliases=("deepseek-v2-lite",),
        ),
        KnownVariant(
            "tiny-deepseek-v2",
            dict(vocab_size=512, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                 num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1,
                 n_routed_experts=8, num_experts_per_tok=2, first_k_dense_replace=1, kv_lora_rank=16,
                 q_lora_rank=None, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
                 topk_method="group_limited_greedy", n_group=4, topk_group=2, norm_topk_prob=False,
                 routed_scaling_factor=1.0, max_position_embeddings=512, bos_token_id=1, eos_token_id=2),
        ),
    )

    @classmethod
    def config_class(cls):
        from transformers import DeepseekV2Config

        return DeepseekV2Config

    @classmethod
    def model_class(cls):
        from transformers import DeepseekV2ForCausalLM

        return DeepseekV2ForCausalLM

    def gating(self) -> str:
        c = self.config
        method = "group-limited-" if c.topk_method == "group_limited_greedy" else ""
        return f"topk-{method}softmax" + ("-renorm" if c.norm_topk_prob else "")

    def scores(self, site, hidden):
        return torch.softmax(self.router_logits(site, hidden).float(), dim=-1)


@register
class DeepseekV3Adapter(_DeepseekAdapter):
    family = "deepseek_v3"
    model_types = ("deepseek_v3",)
    variants = (
        KnownVariant(
            "deepseek-ai/DeepSeek-V3",
            dict(vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
                 num_hidden_layers=61, num_attention_heads=128, num_key_value_heads=128, n_shared_experts=1,
                 n_routed_experts=256, num_experts_per_tok=8, first_k_dense_replace=3, kv_lora_rank=512,
                 q_lora_rank=1536, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_group=8,
                 topk_group=4, norm_topk_prob=True, routed_scaling_factor=2.5, max_position_embeddings=163840),
            671e9,
            aliases=("deepseek-v3",),
        ),
        KnownVariant(
            "tiny-deepseek-v3",
            dict(vocab_size=512, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                 num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1,
                 n_routed_experts=8, num_experts_per_tok=2, first_k_dense_replace=1, kv_lora_rank=16,
                 q_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, n_group=4, topk_group=2,
                 norm_topk_prob=True, routed_scaling_factor=2.5, max_position_embeddings=512, bos_token_id=1,
                 eos_token_id=2),
        ),
    )

    @classmethod
    def config_class(cls):
        from transformers import DeepseekV3Config

        return DeepseekV3Config

    @classmethod
    def model_class(cls):
        from transformers import DeepseekV3ForCausalLM

        return DeepseekV3ForCausalLM

    def gating(self) -> str:
        return "topk-group-limited-sigmoid" + ("-renorm" if self.config.norm_topk_prob else "")

    def scores(self, site, hidden):
        return torch.sigmoid(self.router_logits(site, hidden).float())
