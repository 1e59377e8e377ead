"""OpenAI's GPT-OSS through Hugging Face: top-4 routing with a biased router, experts with biases.

Facts this adapter relies on (transformers 5.x, checked by the tests on a tiny config):
- every block's ``mlp`` holds ``router`` (a linear layer with bias) and
  ``experts``; the router returns ``(logits, weights, ids)`` with the top-k
  sorted best first and the weights a softmax over the k chosen logits
  (equal to the full softmax renormalised over the top-k);
- one expert is a clamped SwiGLU: ``gate_up_proj`` (d x 2f) with a bias of 2f and
  ``down_proj`` (f x d) with a bias of d, so 3 d f + 2 f + d parameters.
"""

from __future__ import annotations

from typing import Any

from pregate.tracer.adapters.base import KnownVariant, RouterSite, register
from pregate.tracer.adapters.topk import TopKRouterAdapter


def _expert_params(d: int, f: int) -> int:
    return 3 * d * f + 2 * f + d


@register
class GptOssAdapter(TopKRouterAdapter):
    family = "gpt_oss"
    model_types = ("gpt_oss",)
    always_renormalise = True
    variants = (
        KnownVariant(
            "openai/gpt-oss-20b",
            dict(vocab_size=201088, hidden_size=2880, intermediate_size=2880, num_hidden_layers=24,
                 num_attention_heads=64, num_key_value_heads=8, head_dim=64, num_local_experts=32,
                 num_experts_per_tok=4, sliding_window=128, max_position_embeddings=131072),
            20.9e9,
            aliases=("gpt-oss-20b",),
        ),
        KnownVariant(
            "tiny-gpt-oss",
            dict(vocab_size=512, hidden_size=64, intermediate_size=32, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, num_local_experts=8, num_experts_per_tok=2, sliding_window=16,
                 max_position_embeddings=512, layer_types=["sliding_attention", "full_attention"] * 2,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                 pad_token_id=0, bos_token_id=1, eos_token_id=2),
        ),
    )

    @classmethod
    def config_class(cls):
        from transformers import GptOssConfig

        return GptOssConfig

    @classmethod
    def model_class(cls):
        from transformers import GptOssForCausalLM

        return GptOssForCausalLM

    @classmethod
    def summarize(cls, config) -> dict[str, Any]:
        out = super().summarize(config)
        out["expert_params"] = _expert_params(int(config.hidden_size), int(config.intermediate_size))
        return out

    def sites(self) -> list[RouterSite]:
        return [RouterSite("decoder", i, i, layer.mlp.router) for i, layer in enumerate(self._layers())]

    def expert_shape(self) -> dict[str, Any]:
        c = self.config
        return {
            "d_model": int(c.hidden_size),
            "d_ff": int(c.intermediate_size),
            "activation": "swiglu-clamped-gated",
            "gating": "topk-softmax-renorm",
            "expert_params": _expert_params(int(c.hidden_size), int(c.intermediate_size)),
        }
