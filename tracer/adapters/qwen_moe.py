"""Alibaba's Qwen2-MoE (shared expert plus routed experts) and Qwen3-MoE through Hugging Face.

Qwen2-MoE's shared expert runs for every token, so it is counted as dense
(always resident) weight, not as a routed expert.
"""

from pregate.tracer.adapters.base import KnownVariant, register
from pregate.tracer.adapters.topk import TopKRouterAdapter


@register
class Qwen2MoeAdapter(TopKRouterAdapter):
    family = "qwen2_moe"
    model_types = ("qwen2_moe",)
    expert_ff_attr = "moe_intermediate_size"
    variants = (
        KnownVariant(
            "Qwen/Qwen1.5-MoE-A2.7B",
            dict(vocab_size=151936, hidden_size=2048, intermediate_size=5632, moe_intermediate_size=1408,
                 shared_expert_intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16,
                 num_key_value_heads=16, num_experts=60, num_experts_per_tok=4, norm_topk_prob=False),
            14.3e9,
            aliases=("qwen1.5-moe-a2.7b",),
        ),
        KnownVariant(
            "tiny-qwen2-moe",
            dict(vocab_size=512, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                 shared_expert_intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, num_experts=8, num_experts_per_tok=2, max_position_embeddings=512,
                 bos_token_id=1, eos_token_id=2),
        ),
    )

    @classmethod
    def config_class(cls):
        from transformers import Qwen2MoeConfig

        return Qwen2MoeConfig

    @classmethod
    def model_class(cls):
        from transformers import Qwen2MoeForCausalLM

        return Qwen2MoeForCausalLM


@register
class Qwen3MoeAdapter(TopKRouterAdapter):
    family = "qwen3_moe"
    model_types = ("qwen3_moe",)
    expert_ff_attr = "moe_intermediate_size"
    variants = (
        KnownVariant(
            "Qwen/Qwen3-30B-A3B",
            dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                 num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                 num_experts=128, num_experts_per_tok=8, norm_topk_prob=True),
            30.5e9,
            aliases=("qwen3-30b-a3b",),
        ),
        KnownVariant(
            "tiny-qwen3-moe",
            dict(vocab_size=512, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                 num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, max_position_embeddings=512,
                 bos_token_id=1, eos_token_id=2),
        ),
    )

    @classmethod
    def config_class(cls):
        from transformers import Qwen3MoeConfig

        return Qwen3MoeConfig

    @classmethod
    def model_class(cls):
        from transformers import Qwen3MoeForCausalLM

        return Qwen3MoeForCausalLM
