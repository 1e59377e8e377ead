"""Google's Switch Transformers (T5 encoder-decoder, top-1 routing) through Hugging Face.

Facts this adapter relies on (checked in tests against the library):
- every other FFN is an MoE layer (blocks 1, 3, 5, ...) in both stacks;
- ``SwitchTransformersTop1Router.forward`` returns a one-hot dispatch mask with
  tokens over ``expert_capacity`` zeroed out (counted per sequence), the top
  probability, and the logits. Downstream code reports a zeroed row as expert
  0; the trace records the expert the router really chose and ``dropped=True``.
- ``SwitchTransformersConfig()`` defaults are not switch-base-8 (d_ff 2048, a
  sparse layer every 4 blocks), so each published variant has its own entry.
"""

from __future__ import annotations

from typing import Any

import torch

from pregate.tracer.adapters.base import KnownVariant, ModelAdapter, RouterSite, Routing, register


def _base(experts: int) -> dict[str, Any]:
    return dict(
        vocab_size=32128,
        d_model=768,
        d_kv=64,
        d_ff=3072,
        num_layers=12,
        num_decoder_layers=12,
        num_sparse_encoder_layers=6,
        num_sparse_decoder_layers=6,
        num_heads=12,
        num_experts=experts,
        expert_capacity=64,
        router_bias=False,
        router_jitter_noise=0.01,
        router_dtype="float32",
        dense_act_fn="relu",
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )


_LARGE_128 = dict(
    _base(128),
    d_model=1024,
    d_ff=4096,
    num_heads=16,
    num_layers=24,
    num_decoder_layers=24,
    num_sparse_encoder_layers=12,
    num_sparse_decoder_layers=12,
)

# Parameter counts as published with the checkpoints (Fedus et al.; model cards).
_PARAMS = {8: 0.62e9, 16: 1.07e9, 32: 1.98e9, 64: 3.79e9, 128: 7.42e9, 256: 14.7e9}


@register
class SwitchAdapter(ModelAdapter):
    family = "switch"
    model_types = ("switch_transformers",)
    encoder_decoder = True
    variants = tuple(
        KnownVariant(f"google/switch-base-{e}", _base(e), _PARAMS[e], aliases=(f"switch-base-{e}",))
        for e in (8, 16, 32, 64, 128, 256)
    ) + (KnownVariant("google/switch-large-128", _LARGE_128, 26.3e9, aliases=("switch-large-128",)),)

    @classmethod
    def config_class(cls):
        from transformers import SwitchTransformersConfig

        return SwitchTransformersConfig

    @classmethod
    def model_class(cls):
        from transformers import SwitchTransformersForConditionalGeneration

        return SwitchTransformersForConditionalGeneration

    @classmethod
    def summarize(cls, config) -> dict[str, Any]:
        gated = "gated" in str(getattr(config, "feed_forward_proj", ""))
        return dict(experts=int(config.num_experts), top_k=1,
                    moe_layers=f"{config.num_sparse_encoder_layers}+{config.num_sparse_decoder_layers}",
                    d_model=config.d_model, d_ff=config.d_ff,
                    expert_params=config.d_model * config.d_ff * (3 if gated else 2))

    def sites(self) -> list[RouterSite]:
        found = []
        for stack_name, stack in (("encoder", self.model.encoder), ("decoder", self.model.decoder)):
            layer = 0
            for block_index, block in enumerate(stack.block):
                mlp = block.layer[-1].mlp
                if hasattr(mlp, "router"):
                    found.append(RouterSite(stack_name, layer, block_index, mlp.router))
                    layer += 1
        return found

    def read_output(self, site: RouterSite, output: Any, hidden: torch.Tensor) -> Routing:
        dispatch, _top_prob, logits = output[0], output[1], output[2]
        num_experts = logits.shape[-1]
        dispatch = dispatch.reshape(-1, num_experts)
        logits = logits.reshape(-1, num_experts)
        # The router's own arithmetic: float32 softmax, cast back to the input dtype, argmax.
        probs = torch.softmax(logits.float(), dim=-1).to(hidden.dtype)
        dropped = dispatch.sum(dim=-1) == 0
        chosen = torch.where(dropped, probs.argmax(dim=-1), dispatch.argmax(dim=-1))
        top = probs.gather(1, chosen[:, None])
        return Routing(chosen[:, None], top.float(), dropped)

    def router_logits(self, site: RouterSite, hidden: torch.Tensor) -> torch.Tensor:
        # One "sequence" of N tokens; the capacity mask in the output is not used.
        output = site.router(hidden.reshape(1, -1, hidden.shape[-1]))
        return output[2].reshape(-1, output[2].shape[-1])

    def expert_shape(self) -> dict[str, Any]:
        c = self.config
        gated = "gated" in str(getattr(c, "feed_forward_proj", "")) 
        params = c.d_model * c.d_ff * (3 if gated else 2)
        return {
            "d_model": c.d_model,
            "d_ff": c.d_ff,
            "activation": c.dense_act_fn,
            "gating": "top1-softmax",
            "expert_params": params,
        }

    def top_k(self) -> int:
        return 1

    def num_experts(self) -> int:
        return int(self.config.num_experts)

    def num_blocks(self) -> int:
        return len(self.model.encoder.block) + len(self.model.decoder.block)

    def capacity(self) -> dict[str, Any]:
        return {
            "kind": "per-sequence",
            "expert_capacity": int(self.config.expert_capacity),
            "semantics": (
                "tokens of one sequence beyond expert_capacity for an expert skip the MoE layer "
                "(residual only); recorded with their chosen expert and dropped=true"
            ),
        }
