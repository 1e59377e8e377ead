"""The first synthetic trace generator, kept to rebuild the traces of old GPU validation records.

``bench/gpu_validate.sh`` does not store its traces: it rebuilds them from a
seed, and a record keeps only what was measured on them. Records made before
the synthetic generator was vectorised (2026-12-01) ran on traces of this
generator: Zipf-like popularity per layer (every odd layer permuted), a
sticky first choice between consecutive tokens, and an ``ahead`` column that
is the true later choice with probability ``ahead_accuracy``. Re-pricing such
a record on today's generator prices other routing than the one measured,
so ``bench/resimulate.py`` rebuilds them with this one. It is a per-row
Python loop (slow, but these traces are a few thousand rows) and must not be
changed: its output is the record's input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pregate.traces import TraceMeta, TraceWriter, build_table


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


def make_trace_v1(folder: str | Path, meta: TraceMeta, *, seqs: int, prompt_len: int, new_tokens: int, seed: int = 0,
                  skew: float = 1.0, stickiness: float = 0.3, ahead_accuracy: float = 0.8) -> Path:
    """Write the trace the first generator wrote for ``meta`` and these parameters, row for row."""
    rng = np.random.default_rng(seed)
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
