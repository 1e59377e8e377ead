"""pregate's own small MoE model (tracer/smallmoe), read like any top-k family."""

from pregate.tracer.adapters.base import KnownVariant, register
from pregate.tracer.adapters.topk import TopKRouterAdapter


@register
class SmallMoEAdapter(TopKRouterAdapter):
    family = "pregate_moe"
    model_types = ("pregate_moe",)
    variants = (
        KnownVariant("pregate-moe-tiny", {"preset": "tiny"}, aliases=("tiny",)),
        KnownVariant("pregate-moe-small-140m", {"preset": "small-140m"}, 140e6, aliases=("small-140m",)),
    )

    @classmethod
    def config_class(cls):
        from pregate.tracer.smallmoe.model import SmallMoEConfig

        return SmallMoEConfig

    @classmethod
    def model_class(cls):
        from pregate.tracer.smallmoe.model import SmallMoEModel

        return SmallMoEModel

    @classmethod
    def build_config(cls, overrides):
        from dataclasses import replace

        from pregate.tracer.smallmoe.model import PRESETS

        overrides = dict(overrides)
        base = PRESETS[overrides.pop("preset", "tiny")]
        return replace(base, **overrides)

    @classmethod
    def summarize(cls, config):
        blocks = [b for b in range(config.n_layers) if config.is_moe(b)]
        return dict(experts=config.num_experts, top_k=config.top_k, moe_layers=str(len(blocks)),
                    d_model=config.d_model, d_ff=config.d_ff, expert_params=2 * config.d_model * config.d_ff)

    def expert_shape(self):
        shape = super().expert_shape()
        shape["activation"] = "gelu"
        shape["expert_params"] = 2 * self.config.d_model * self.config.d_ff
        return shape
