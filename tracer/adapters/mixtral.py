"""Mistral's Mixtral (8 experts, top-2, SiLU-gated experts) through Hugging Face."""

from pregate.tracer.adapters.base import KnownVariant, register
from pregate.tracer.adapters.topk import TopKRouterAdapter


@register
class MixtralAdapter(TopKRouterAdapter):
    family = "mixtral"
    model_types = ("mixtral",)
    always_renormalise = True  # Mixtral renormalises its top-2 weights
    variants = (
        KnownVariant(
            "mistralai/Mixtral-8x7B-v0.1",
            dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2,
                 max_position_embeddings=32768, rope_theta=1e6),
            46.7e9,
            aliases=("mixtral-8x7b",),
        ),
        KnownVariant(
            "tiny-mixtral",
            dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2,
                 max_position_embeddings=512, bos_token_id=1, eos_token_id=2),
        ),
    )

    @classmethod
    def config_class(cls):
        from transformers import MixtralConfig

        return MixtralConfig

    @classmethod
    def model_class(cls):
        from transformers import MixtralForCausalLM

        return MixtralForCausalLM
