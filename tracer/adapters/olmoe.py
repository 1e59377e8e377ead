"""Allen AI's OLMoE (64 experts, top-8, SiLU-gated experts) through Hugging Face."""

from pregate.tracer.adapters.base import KnownVariant, register
from pregate.tracer.adapters.topk import TopKRouterAdapter


@register
class OlmoeAdapter(TopKRouterAdapter):
    family = "olmoe"
    model_types = ("olmoe",)
    variants = (
        KnownVariant(
            "allenai/OLMoE-1B-7B-0924",
            dict(vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16,
                 num_attention_heads=16, num_key_value_heads=16, num_experts=64, num_experts_per_tok=8,
                 norm_topk_prob=False, max_position_embeddings=4096),
            6.9e9,
            aliases=("olmoe-1b-7b",),
        ),
        KnownVariant(
            "tiny-olmoe",
            dict(vocab_size=512, hidden_size=64, intermediate_size=32, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=4, num_experts=16, num_experts_per_tok=4,
                 max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2),
        ),
    )

    @classmethod
    def config_class(cls):
        from transformers import OlmoeConfig

        return OlmoeConfig

    @classmethod
    def model_class(cls):
        from transformers import OlmoeForCausalLM

        return OlmoeForCausalLM
