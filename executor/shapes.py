"""Named model shapes for synthetic traces: what validation runs when no recorded trace is at hand.

The routing of these traces is synthetic (skewed, sticky, with a noisy
``ahead`` signal; see pregate.simulator.synthetic); the shapes are those of the
named models, so copies, expert kernels and dense work have their real sizes.
"""

from __future__ import annotations

from pathlib import Path

from pregate.executor.device import ExecutorError
from pregate.traces import StackMeta, TraceMeta

# name -> (d_model, d_ff, experts, top_k, decoder MoE layers, encoder MoE layers, gated, dense params per block, blocks)
SHAPES = {
    "switch-base-8": (768, 3072, 8, 1, 6, 6, False, 5_900_000, 24),
    "switch-base-64": (768, 3072, 64, 1, 6, 6, False, 5_900_000, 24),
    "mixtral-like": (4096, 14336, 8, 2, 4, 0, True, 4 * 4096 * 4096, 4),
    "small-moe-140m": (512, 2048, 8, 1, 6, 0, False, 4 * 512 * 512 + 2 * 512 * 2048, 12),
    "tiny": (64, 128, 8, 2, 4, 0, False, 4 * 64 * 64, 4),
    "tiny-switch": (32, 64, 8, 1, 3, 3, False, 4 * 32 * 32, 12),
}


def shape_meta(name: str, dtype: str = "float32", ahead: int = 3) -> TraceMeta:
    if name not in SHAPES:
        raise ExecutorError(f"unknown shape '{name}' (valid: {', '.join(SHAPES)})")
    d, f, experts, k, layers, enc, gated, dense, blocks = SHAPES[name]
    params = (3 if gated else 2) * d * f
    scales = params // 64 * 2
    stacks = {}
    per_stack = blocks // (2 if enc else 1)
    step = max(1, per_stack // layers)
    if enc:
        stacks["encoder"] = StackMeta(enc, experts, k, [step * i + step - 1 for i in range(enc)])
    stacks["decoder"] = StackMeta(layers, experts, k, [step * i + step - 1 for i in range(layers)])
    bytes_of = {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]
    return TraceMeta(
        model_id=f"synthetic/{name}", family="synthetic", stacks=stacks, d_model=d, d_ff=f,
        activation="silu-gated" if gated else "relu", gating="topk-softmax" if k > 1 else "top1-softmax",
        expert_params=params,
        bytes_per_expert={"float32": 4 * params, "bfloat16": 2 * params, "float16": 2 * params,
                          "int8": params + scales, "int4": params // 2 + scales},
        dense_bytes_per_layer=dense * bytes_of, dtype=dtype, ahead_distance=ahead, seed=0,
        extra={"blocks": blocks, "shape": name},
    )


def make_shape_trace(folder: str | Path, name: str, *, seqs: int = 4, prompt_len: int = 8, new_tokens: int = 16,
                     dtype: str = "float32", seed: int = 0) -> Path:
    """A synthetic trace of the named model shape (see :data:`SHAPES`)."""
    from pregate.simulator.synthetic import make_trace

    return make_trace(folder, seqs=seqs, prompt_len=prompt_len, new_tokens=new_tokens, seed=seed,
                      meta=shape_meta(name, dtype))
