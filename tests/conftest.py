"""Shared fixtures: small models of every family and small traces built by hand."""

from __future__ import annotations

import os

# One OpenMP thread per test process, set before anything imports torch. The models here are tiny: extra
# threads only spin, and on a shared 2-core machine they spin against every other job. Measured side by side
# on the loaded machine: the nine switch offload tests took 160 s (78 s CPU) with torch's default threads and
# 37 s (20 s CPU) with one. Results do not depend on it (determinism is checked within one setting); a caller
# who wants more threads sets OMP_NUM_THREADS, which is left as given. Subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest

# A Switch model of the real structure (T5 encoder-decoder, MoE every other
# block, top-1, capacity per sequence) at a size that runs in a second.
SMALL_SWITCH = dict(
    vocab_size=512, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=8, num_decoder_layers=8,
    num_sparse_encoder_layers=4, num_sparse_decoder_layers=4,
)

TINY_FAMILIES = ["tiny-mixtral", "tiny-qwen2-moe", "tiny-qwen3-moe", "tiny-olmoe", "pregate-moe-tiny"]


@pytest.fixture(scope="session")
def small_switch():
    from pregate.tracer.models import build_random

    return build_random("google/switch-base-8", seed=1, overrides=SMALL_SWITCH)


def make_meta(ahead: int = 3, stacks=None, **kw):
    from pregate.traces import StackMeta, TraceMeta

    stacks = stacks or {"decoder": StackMeta(moe_layers=4, experts=8, top_k=2)}
    fields = dict(
        model_id="test-model", family="test", stacks=stacks, d_model=64, d_ff=128, activation="relu",
        gating="topk-softmax", expert_params=2 * 64 * 128, bytes_per_expert={"float32": 4 * 2 * 64 * 128},
        dense_bytes_per_layer=1000, ahead_distance=ahead,
    )
    fields.update(kw)
    return TraceMeta(**fields)


def make_table(meta, seqs: int = 3, tokens: int = 5, seed: int = 0):
    """A valid decoder-only table: one prefill step of 2 tokens, then decode tokens."""
    from pregate.traces import build_table

    rng = np.random.default_rng(seed)
    stack = meta.stacks["decoder"]
    L, E, k, J = stack.moe_layers, stack.experts, stack.top_k, meta.ahead_distance
    w = meta.ahead_k("decoder")
    rows = []
    for s in range(seqs):
        for p in range(tokens):
            step = 0 if p < 2 else p - 1
            for layer in range(L):
                rows.append((s, step, p, layer))
    rows = np.array(rows)
    n = len(rows)
    experts = np.stack([rng.permutation(E)[:k] for _ in range(n)])
    probs = rng.dirichlet(np.ones(k), size=n).astype(np.float32)
    ahead = np.stack([np.stack([rng.permutation(E)[:w] for _ in range(J)]) for _ in range(n)]) if J else None
    ahead_probs = rng.uniform(0, 1, size=(n, J, w)).astype(np.float32) if J else None
    return build_table(
        meta, seq=rows[:, 0], stack=np.array(["decoder"] * n), phase=np.where(rows[:, 1] == 0, "prefill", "decode"),
        step=rows[:, 1], pos=rows[:, 2], layer=rows[:, 3], token=rng.integers(0, 100, n), experts=experts,
        probs=probs, ahead=ahead, ahead_probs=ahead_probs,
    )
