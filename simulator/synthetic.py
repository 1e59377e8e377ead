"""Synthetic traces for tests and benchmarks: skewed, sticky routing with a noisy ahead signal.

Real traces come from ``pregate trace``; these exist so that tests and the
benchmark can make a trace of any shape in milliseconds. Routing per layer
follows a Zipf-like popularity with some stickiness between consecutive tokens
(as real MoE routing has), and the ``ahead`` column is the true later choice
with probability ``ahead_accuracy``, else a random expert.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pregate.traces import StackMeta, TraceMeta, TraceWriter, build_table


def synthetic_meta(layers: int = 4, experts: int = 8, top_k: int = 1, ahead: int = 3, encoder_layers: int = 0,
                   d_model: int = 768, d_ff: int = 3072) -> TraceMeta:
    params = 2 * d_model * d_ff
    stacks = {"decoder": StackMeta(layers, experts, top_k, [2 * i + 1 for i in range(layers)])}
    if encoder_layers:
        stacks = {"encoder": StackMeta(encoder_layers, experts, top_k, [2 * i + 1 for i in range(encoder_layers)]), **stacks}
    return TraceMeta(
        model_id="synthetic", family="synthetic", stacks=stacks, d_model=d_model, d_ff=d_ff, activation="relu",
        gating="top1-softmax" if top_k == 1 else "topk-softmax", expert_params=params,
        bytes_per_expert={"float32": 4 * params, "bfloat16": 2 * params, "float16": 2 * params,
                          "int8": params + params // 64 * 2, "int4": params // 2 + params // 64 * 2},
        dense_bytes_per_layer=4 * 4 * d_model * d_model, dtype="float32", ahead_distance=ahead, seed=0,
    )


def _route(rng, n, experts, top_k, popularity, previous, stickiness):
    choice = np.empty((n, top_k), dtype=np.int64)
    for r in range(n):
        if previous is not None and rng.random() < stickiness:
            first = previous[r % len(previous), 0]
        else:
            first = rng.choice(experts, p=popularity)
        row = [first]
        while len(row) < top_k:
            e = int(rng.choice(experts, p=popularity))
            if e not in row:
                row.append(e)
        choice[r] = row
    return choice


def make_trace(folder: str | Path, *, seqs: int = 4, prompt_len: int = 4, new_tokens: int = 8, layers: int = 4,
               experts: int = 8, top_k: int = 1, ahead: int = 3, encoder_layers: int = 0, seed: int = 0,
               skew: float = 1.0, stickiness: float = 0.3, ahead_accuracy: float = 0.8,
               meta: TraceMeta | None = None) -> Path:
    """Write a trace folder; ``prompt_len=0`` makes a decode-only trace (no prefill rows).

    ``meta`` replaces the default metadata (any expert shape); its stacks then
    give the layers, experts, top-k and encoder layers, and its ``ahead_distance`` J.
    """
    rng = np.random.default_rng(seed)
    if meta is None:
        meta = synthetic_meta(layers, experts, top_k, ahead, encoder_layers)
    else:
        dec = meta.stacks["decoder"]
        layers, experts, top_k, ahead = dec.moe_layers, dec.experts, dec.top_k, meta.ahead_distance
        encoder_layers = meta.stacks["encoder"].moe_layers if "encoder" in meta.stacks else 0
    popularity = 1.0 / np.arange(1, experts + 1) ** skew
    popularity /= popularity.sum()
    cols: dict[str, list] = {k: [] for k in ("seq", "stack", "phase", "step", "pos", "layer", "token", "experts",
                                             "probs", "ahead", "ahead_probs")}
    for seq in range(seqs):
        passes = []  # (stack, phase, step, positions, n_layers)
        if encoder_layers:
            passes.append(("encoder", "prefill", 0, list(range(max(1, prompt_len))), encoder_layers))
            passes += [("decoder", "decode", s, [s - 1], layers) for s in range(1, new_tokens + 1)]
        else:
            if prompt_len:
                passes.append(("decoder", "prefill", 0, list(range(prompt_len)), layers))
            passes += [("decoder", "decode", s, [prompt_len + s - 1], layers) for s in range(1, new_tokens + 1)]
        previous = {}
        for stack, phase, step, positions, n_layers in passes:
            n = len(positions)
            chosen = []
            for layer in range(n_layers):
                perm = rng.permutation(experts) if layer % 2 else np.arange(experts)
                pop = popularity[np.argsort(perm)]
                choice = _route(rng, n, experts, top_k, pop, previous.get((stack, layer)), stickiness)
                previous[(stack, layer)] = choice
                chosen.append(choice)
            for layer in range(n_layers):
                probs = np.sort(rng.dirichlet(np.ones(top_k + 1), size=n)[:, :top_k], axis=1)[:, ::-1]
                cube = np.zeros((n, max(ahead, 1), top_k), dtype=np.int64)
                cube_p = np.zeros((n, max(ahead, 1), top_k), dtype=np.float32)
                for j in range(1, ahead + 1):
                    if layer + j < n_layers:
                        true = chosen[layer + j]
                        noise = rng.integers(0, experts, size=true.shape)
                        keep = rng.random(true.shape) < ahead_accuracy
                        guess = np.where(keep, true, noise)
                        for r in range(n):  # keep experts distinct within a row
                            row = list(dict.fromkeys(guess[r].tolist()))
                            fill = [e for e in range(experts) if e not in row]
                            guess[r] = (row + fill)[:top_k]
                        cube[:, j - 1] = guess
                        cube_p[:, j - 1] = probs
                for r, pos in enumerate(positions):
                    cols["seq"].append(seq)
                    cols["stack"].append(stack)
                    cols["phase"].append(phase)
                    cols["step"].append(step)
                    cols["pos"].append(pos)
                    cols["layer"].append(layer)
                    cols["token"].append(int(rng.integers(0, 1000)))
                    cols["experts"].append(chosen[layer][r])
                    cols["probs"].append(probs[r])
                    cols["ahead"].append(cube[r])
                    cols["ahead_probs"].append(cube_p[r])
    data = {k: np.array(v) for k, v in cols.items()}
    order = np.lexsort((data["layer"], data["pos"], data["step"], np.array([s == "decoder" for s in cols["stack"]]), data["seq"]))
    data = {k: v[order] for k, v in data.items()}
    table = build_table(
        meta, **{k: data[k] for k in ("seq", "stack", "phase", "step", "pos", "layer", "token", "experts", "probs")},
        ahead=data["ahead"] if ahead else None, ahead_probs=data["ahead_probs"] if ahead else None,
    )
    writer = TraceWriter(folder, meta, overwrite=True)
    writer.write(0, table)
    return Path(folder)
