"""Synthetic traces: vectorised, with routing statistics set by a few knobs.

Real traces come from ``pregate trace`` or ``pregate import``; synthetic ones
exist so that tests, benchmarks and sweeps can have a trace of any shape and
size in seconds. The routing is a log-linear model, sampled with the Gumbel
top-k trick (adding Gumbel noise to logits and taking the k largest draws k
experts without replacement from their softmax):

    logit[t, l, e] = log popularity[l, e]                       (per-layer load skew)
                   + transition * W[l, top1[t, l-1], e]          (layer-to-layer structure)
                   + persistence * [e chosen by token t-1 at l]  (consecutive-token overlap)
                   + big * [sticky and e == top1[t-1, l]]        (``stickiness``: repeat the top-1)

``W[l]`` is a fixed random Gaussian matrix per layer pair: each expert of
layer l-1 has its own preference over layer l's experts. Why this model: each
knob moves one statistic that ``pregate trace-stats`` measures (max/mean load
and entropy; L->L+1 top-1 transition accuracy; overlap of consecutive tokens'
sets and the LRU hit curve), so a preset can be tuned to match real routing.

Why it is fast: a token depends only on the previous layer of itself and on
the same layer of the previous token, so the loop runs over (position, layer)
while every sequence is one numpy lane. Long sequences are cut into lanes
(of ``LANE`` tokens at most, and shorter, down to ``MIN_LANE``, when there
are too few sequences to fill the vectors); the first token of each later
lane does not see its predecessor (at most 1 token in ``MIN_LANE``: the
overlap and LRU figures move by well under 1%).

The ``ahead`` column (the pre-gating signal) has its own knob: each of the k
entries of ``ahead[j]`` names the expert the layer l+j really chose in that
slot with probability ``ahead_accuracy`` (a number, or one per distance j),
otherwise an expert layer l+j did not choose; its top-1 accuracy and its
recall@k are therefore ``ahead_accuracy`` in expectation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from pregate.traces import StackMeta, TraceMeta, TraceWriter, build_table
from pregate.traces.errors import TraceError
from pregate.traces.importers.model_shapes import KNOWN_MODELS

LANE = 1024  # most tokens of one sequence generated as one dependent chain
MIN_LANE, MIN_LANES = 64, 512  # shorter lanes only while there are fewer than MIN_LANES of them
ROWS_PER_PART = 4_000_000  # rows per Parquet part (bounds the writer's memory)


@dataclass(frozen=True)
class Knobs:
    """The routing model's parameters (see the module docstring for the formula)."""

    skew: float = 0.3  # std of the per-layer log-popularity (0: every expert equally popular)
    zipf: float = 0.0  # Zipf exponent added to the log-popularity (rank r gets -zipf*log r)
    transition: float = 0.0  # weight of the previous layer's top-1 preference row
    persistence: float = 0.0  # logit bonus (negative: malus) on the previous token's experts
    stickiness: float = 0.0  # probability that the top-1 repeats the previous token's top-1
    lead_skew: float = 0.0  # std of a per-layer logit offset for the first pick only (top-1 more skewed than top-k)
    styles: int = 0  # sequence styles (0: none): each sequence draws one, which shifts its logits
    style_skew: float = 0.0  # std of a style's per-layer log-popularity offsets (sequence-local hot experts)
    style_transition: float = 0.0  # std of a style's own layer-to-layer preference rows


@dataclass(frozen=True)
class Preset:
    """A named shape with knobs tuned so that ``trace-stats`` matches measured routing."""

    name: str
    model_id: str
    layers: int
    experts: int
    top_k: int
    d_model: int
    d_ff: int
    activation: str
    dense_params: int
    knobs: Knobs
    seqs: int  # default size: the in-sample transition accuracy depends on it (see like_trace)
    decode_tokens: int
    where: str  # where the shape numbers come from


# Targets (measured on real traces; ARCHITECTURE.md "Real routing, measured"):
#   mixtral-8x7b: load 1.35, entropy 0.988, transition 0.41 / 0.34 CV / marginal 0.23,
#                 overlap 0.38, LRU hit 0.31 / 0.58 / 0.79 at 2 / 4 / 6 of 8 experts.
#   flame-moe-290m: load 1.53, entropy 0.994, transition 0.24 / 0.17 CV / marginal 0.04,
#                 LRU hit within a 64-token sequence 0.10 / 0.22 / 0.47 at 8 / 16 / 32 of 64.
def _known(name: str, fallback: dict) -> dict:
    """A published shape from the importers' table when it has the model, else ``fallback``."""
    shape = KNOWN_MODELS.get(name)
    if shape is None:
        return fallback
    return dict(model_id=shape["model_id"], layers=shape["stacks"]["decoder"], experts=shape["experts"],
                top_k=shape["top_k"], d_model=shape["d_model"], d_ff=shape["d_ff"], activation=shape["activation"],
                dense_params=shape["dense_params"], where="shape: traces/importers/model_shapes.py")


# FLAME-MoE-290M-1.3B: the model card gives 9 blocks (the first dense), 64 experts, 6 routed + 2 shared;
# d_model 1024 and d_ff 704 are estimates that reproduce 290M active / 1.3B total parameters.
_FLAME = dict(model_id="CMU-FLAME/FLAME-MoE-290M-1.3B", layers=8, experts=64, top_k=6, d_model=1024, d_ff=704,
              activation="silu-gated", dense_params=4 * 1024 * 1024 + 2 * 3 * 1024 * 704 + 1024 * 64,
              where="shape: model card; d_model and d_ff estimated from the parameter counts")

PRESETS: dict[str, Preset] = {
    "mixtral-8x7b": Preset(name="mixtral-8x7b", **_known("mixtral-8x7b", {}),
                           knobs=Knobs(skew=0.05, lead_skew=0.55, transition=1.1, persistence=0.6, styles=64,
                                       style_transition=0.8), seqs=4, decode_tokens=512),
    "flame-moe-290m": Preset(name="flame-moe-290m", **_known("flame-moe-290m", _FLAME),
                             knobs=Knobs(skew=0.2, lead_skew=0.4, transition=1.55, persistence=0.1), seqs=28,
                             decode_tokens=64),
}


def preset(name: str) -> Preset:
    try:
        return PRESETS[name.strip().lower()]
    except KeyError:
        raise TraceError(f"unknown --like '{name}' (known: {', '.join(PRESETS)})") from None


def synthetic_meta(layers: int = 4, experts: int = 8, top_k: int = 1, ahead: int = 3, encoder_layers: int = 0,
                   d_model: int = 768, d_ff: int = 3072, *, model_id: str = "synthetic", activation: str = "relu",
                   dense_bytes: int | None = None, dtype: str = "float32") -> TraceMeta:
    params = (3 if activation.endswith("gated") else 2) * d_model * d_ff
    stacks = {"decoder": StackMeta(layers, experts, top_k, [2 * i + 1 for i in range(layers)])}
    if encoder_layers:
        stacks = {"encoder": StackMeta(encoder_layers, experts, top_k, [2 * i + 1 for i in range(encoder_layers)]), **stacks}
    return TraceMeta(
        model_id=model_id, family="synthetic", stacks=stacks, d_model=d_model, d_ff=d_ff, activation=activation,
        gating="top1-softmax" if top_k == 1 else "topk-softmax", expert_params=params,
        bytes_per_expert={"float32": 4 * params, "bfloat16": 2 * params, "float16": 2 * params,
                          "int8": params + params // 64 * 2, "int4": params // 2 + params // 64 * 2},
        dense_bytes_per_layer=4 * 4 * d_model * d_model if dense_bytes is None else dense_bytes,
        dtype=dtype, ahead_distance=ahead, seed=0,
    )


def _normal_profile(rng, n: int, rows: int = 1) -> np.ndarray:
    """(rows, n) standard-normal quantiles, each row in its own random order.

    Quantiles instead of draws: a layer's skew (or preference profile) then has
    the same spread under every seed, only the experts it favours change, so
    a small trace's statistics vary far less from seed to seed.
    """
    from statistics import NormalDist

    q = np.array([NormalDist().inv_cdf((i + 0.5) / n) for i in range(n)])
    return np.stack([q[rng.permutation(n)] for _ in range(rows)])


def _popularity(rng, layers: int, experts: int, knobs: Knobs, permute_odd: bool) -> np.ndarray:
    """(layers, experts) log-popularity: Zipf by rank plus Gaussian skew, centred."""
    logp = np.zeros((layers, experts))
    if knobs.zipf:
        zipf = -knobs.zipf * np.log(np.arange(1, experts + 1))
        for layer in range(layers):
            # the same hot experts on even layers, shuffled on odd ones (as the old generator did)
            logp[layer] = zipf[rng.permutation(experts)] if permute_odd and layer % 2 else zipf
    if knobs.skew:
        logp = logp + knobs.skew * _normal_profile(rng, experts, layers)
    return (logp - logp.mean(axis=1, keepdims=True)).astype(np.float32)


def _balanced_preferences(rng, layers: int, experts: int) -> np.ndarray:
    """(layers, E, E) preference rows W[l, a, :]: every row and every column a permutation of one profile.

    Row a of layer l is the Gaussian profile g_l shifted by a's rank under a
    random relabelling: each source expert prefers different successors, and
    no successor is preferred more than another overall, so the transitions
    add predictability without adding load skew (that is ``skew``'s job).
    """
    out = np.zeros((layers, experts, experts), dtype=np.float32)
    for layer in range(layers):
        g = _normal_profile(rng, experts)[0]
        src, dst = rng.permutation(experts), rng.permutation(experts)
        out[layer] = g[(dst[None, :] - src[:, None]) % experts]
    return out


def route(rng: np.random.Generator, lengths: Sequence[int], layers: int, experts: int, top_k: int,
          knobs: Knobs, *, permute_odd: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Routing of every token of sequences of the given lengths, tokens in order, sequence after sequence.

    Returns ``experts`` (tokens, layers, k) int16, best first, and ``probs``
    (tokens, layers, k) float32, the softmax of the chosen logits (without the
    noise) renormalised over the k chosen.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n_tok = int(lengths.sum())
    logp = _popularity(rng, layers, experts, knobs, permute_odd)
    pref = knobs.transition * _balanced_preferences(rng, layers, experts)
    lead = (knobs.lead_skew * _normal_profile(rng, experts, layers)).astype(np.float32)
    n_styles = max(1, knobs.styles)
    style_pop = np.zeros((n_styles, layers, experts), dtype=np.float32)
    style_pref = np.zeros((n_styles, layers, experts, experts), dtype=np.float32)
    if knobs.styles:
        style_pop += (knobs.style_skew * rng.standard_normal(style_pop.shape)).astype(np.float32)
        style_pref += (knobs.style_transition * rng.standard_normal(style_pref.shape)).astype(np.float32)
    seq_style = rng.integers(0, n_styles, size=len(lengths))
    # lanes: each sequence cut into chunks of at most LANE tokens
    # lane length: whole sequences when there are enough of them to fill the vectors, else cut
    # into at least MIN_LANE-token pieces so that a few long sequences still run as many lanes
    m = int(min(lengths.max(), LANE, max(MIN_LANE, -(-n_tok // MIN_LANES)))) if n_tok else 0
    chunks = -(-lengths // max(m, 1))
    n_lanes = int(chunks.sum())
    seq_start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    lane_seq = np.repeat(np.arange(len(lengths)), chunks)
    lane_chunk = np.arange(n_lanes) - np.repeat(np.concatenate([[0], np.cumsum(chunks)[:-1]]), chunks)
    lane_start = seq_start[lane_seq] + lane_chunk * m
    lane_len = np.minimum(m, lengths[lane_seq] - lane_chunk * m)
    lane_style = seq_style[lane_seq]
    out = np.zeros((n_tok, layers, top_k), dtype=np.int16)
    probs = np.zeros((n_tok, layers, top_k), dtype=np.float32)
    rows = np.arange(n_lanes)
    prev_sets = np.zeros((layers, n_lanes, experts), dtype=np.float32)  # previous token's chosen experts
    prev_top1 = np.zeros((layers, n_lanes), dtype=np.int64)
    big = np.float32(1e4)
    for p in range(m):
        live = lane_len > p
        lanes = rows[live] if not live.all() else rows
        tok = lane_start[lanes] + p
        # Gumbel noise as -log of unit exponentials (one log per draw instead of two)
        gumbel = -np.log(rng.standard_exponential((layers, len(lanes), experts), dtype=np.float32) + np.float32(1e-30))
        sticky = rng.random((layers, len(lanes))) < knobs.stickiness if knobs.stickiness and p else None
        above = None
        style = lane_style[lanes]
        for layer in range(layers):
            if knobs.styles:
                logits = logp[layer] + style_pop[style, layer]
            else:
                logits = np.broadcast_to(logp[layer], (len(lanes), experts)).copy()
            if layer and knobs.transition:
                logits += pref[layer][above]
            if layer and knobs.styles and knobs.style_transition:
                logits += style_pref[style, layer, above]
            if p:
                if knobs.persistence:
                    logits += knobs.persistence * prev_sets[layer, lanes]
                if sticky is not None:
                    s = sticky[layer]
                    logits[s, prev_top1[layer, lanes[s]]] += big
            noisy = logits + gumbel[layer]
            if knobs.lead_skew:
                # the first pick sees an extra per-layer offset; the others are the best of the rest
                first = (noisy + lead[layer]).argmax(axis=1)
                noisy[np.arange(len(first)), first] = np.float32(3e4)
            if top_k == 1:
                chosen = noisy.argmax(axis=1)[:, None]
            else:
                part = np.argpartition(noisy, experts - top_k, axis=1)[:, experts - top_k:]
                order = np.argsort(-np.take_along_axis(noisy, part, axis=1), axis=1, kind="stable")
                chosen = np.take_along_axis(part, order, axis=1)
            if knobs.lead_skew:
                noisy[np.arange(len(first)), first] = (logits + gumbel[layer])[np.arange(len(first)), first]
            out[tok, layer] = chosen
            # router probabilities: softmax of the noisy scores over the chosen, best first
            z = np.take_along_axis(noisy, chosen, axis=1)
            if sticky is not None and sticky[layer].any():
                z[sticky[layer]] -= np.where(chosen[sticky[layer]] == prev_top1[layer, lanes[sticky[layer]]][:, None],
                                             big, 0)
            z = -np.sort(-z, axis=1)
            w = np.exp(z - z[:, :1])
            probs[tok, layer] = w / w.sum(axis=1, keepdims=True)
            above = chosen[:, 0]
            sets = np.zeros((len(lanes), experts), dtype=np.float32)
            np.put_along_axis(sets, chosen, 1.0, axis=1)
            prev_sets[layer, lanes] = sets
            prev_top1[layer, lanes] = above
    return out, probs


def ahead_guesses(rng: np.random.Generator, chosen: np.ndarray, experts: int, distance: int,
                  accuracy: float | Sequence[float]) -> np.ndarray:
    """(tokens, layers, distance, k) ``ahead`` cube from the true routing ``chosen`` (tokens, layers, k).

    Slot i of entry j is the true i-th expert of layer l+j with probability
    ``accuracy[j-1]``, else a distinct expert that layer did not choose; entries
    past the last layer are zero (the writer drops them).
    """
    n, layers, k = chosen.shape
    acc = np.broadcast_to(np.asarray(accuracy, dtype=np.float64), (distance,))
    if np.any((acc < 0) | (acc > 1)):
        raise TraceError(f"ahead accuracy must be within 0..1, got {list(acc)}")
    cube = np.zeros((n, layers, max(distance, 1), k), dtype=np.int16)
    for j in range(1, distance + 1):
        if j >= layers:
            break
        true = chosen[:, j:].astype(np.int64)  # (n, layers-j, k)
        keys = rng.random((n, layers - j, experts), dtype=np.float32)
        np.put_along_axis(keys, true, 2.0, axis=2)  # chosen experts sort last
        noise = np.argpartition(keys, k - 1, axis=2)[..., :k] if k < experts else true
        keep = rng.random(true.shape) < acc[j - 1]
        cube[:, : layers - j, j - 1] = np.where(keep, true, noise)
    return cube


def _ahead_probs(probs: np.ndarray, distance: int) -> np.ndarray:
    """(tokens, layers, distance, k): the router probabilities of layer l+j stand in for ahead[j]'s scores."""
    n, layers, k = probs.shape
    out = np.zeros((n, layers, distance, k), dtype=np.float32)
    for j in range(1, min(distance, layers - 1) + 1):
        out[:, : layers - j, j - 1] = probs[:, j:]
    return out


def _passes(prompt_len: int, new_tokens: int):
    """(phase, step, positions) of one sequence's decoder tokens, in token order."""
    phase = ["prefill"] * prompt_len + ["decode"] * new_tokens
    step = [0] * prompt_len + list(range(1, new_tokens + 1))
    return np.array(phase), np.array(step, dtype=np.int64), np.arange(prompt_len + new_tokens)


def generate(folder: str | Path, meta: TraceMeta, *, seqs: int, prompt_len: int, new_tokens: int, knobs: Knobs,
             seed: int = 0, ahead_accuracy: float | Sequence[float] | None = 0.8, permute_odd: bool = False,
             progress: bool = False) -> Path:
    """Write a synthetic trace of ``meta``'s shape: ``seqs`` sequences of ``prompt_len`` + ``new_tokens`` tokens.

    An encoder stack, when ``meta`` has one, routes ``max(1, prompt_len)``
    tokens per sequence; the decoder then decodes ``new_tokens`` steps from
    position 0. ``ahead_accuracy=None`` or ``meta.ahead_distance == 0`` writes
    no ``ahead`` column (like an imported trace).
    """
    if seqs < 1 or new_tokens < 0 or prompt_len < 0 or prompt_len + new_tokens < 1:
        raise TraceError("a synthetic trace needs at least one sequence and one token per sequence")
    if not 0.0 <= knobs.stickiness <= 1.0:
        raise TraceError(f"stickiness must be within 0..1, got {knobs.stickiness}")
    rng = np.random.default_rng(seed)
    distance = meta.ahead_distance if ahead_accuracy is not None else 0
    if distance == 0 and meta.ahead_distance:
        meta = replace(meta, ahead_distance=0)
    frames = []
    for stack in ("encoder", "decoder"):
        if stack not in meta.stacks:
            continue
        st = meta.stacks[stack]
        if stack == "encoder":
            n_prompt, n_new = max(1, prompt_len), 0
            phase1 = np.array(["prefill"] * n_prompt)
            step1, pos1 = np.zeros(n_prompt, np.int64), np.arange(n_prompt)
        else:
            if "encoder" in meta.stacks:
                phase1 = np.array(["decode"] * new_tokens)
                step1, pos1 = np.arange(1, new_tokens + 1), np.arange(new_tokens)
            else:
                phase1, step1, pos1 = _passes(prompt_len, new_tokens)
        per_seq = len(pos1)
        if per_seq == 0:
            continue
        chosen, probs = route(rng, [per_seq] * seqs, st.moe_layers, st.experts, st.top_k, knobs,
                              permute_odd=permute_odd)
        cube = None
        if distance:
            width = meta.ahead_k(stack)
            if width != st.top_k:
                raise TraceError("synthetic traces store top-k ahead entries (ahead_width must be unset)")
            cube = ahead_guesses(rng, chosen, st.experts, distance, ahead_accuracy)
        frames.append((stack, per_seq, phase1, step1, pos1, chosen, probs, cube))
    writer = TraceWriter(folder, meta, overwrite=True)
    tables = []
    for stack, per_seq, phase1, step1, pos1, chosen, probs, cube in frames:
        layers, k = chosen.shape[1], chosen.shape[2]
        n = seqs * per_seq * layers
        tables.append(dict(
            stack=stack, n=n,
            seq=np.repeat(np.arange(seqs, dtype=np.int32), per_seq * layers),
            phase=np.tile(np.repeat(np.where(phase1 == "decode", 1, 0).astype(np.int8), layers), seqs),
            step=np.tile(np.repeat(step1, layers), seqs), pos=np.tile(np.repeat(pos1, layers), seqs),
            layer=np.tile(np.arange(layers, dtype=np.int16), seqs * per_seq),
            experts=chosen.reshape(n, k), probs=probs.reshape(n, k),
            ahead=None if cube is None else cube.reshape(n, cube.shape[2], k),
            ahead_probs=None if cube is None else _ahead_probs(probs, cube.shape[2]).reshape(n, cube.shape[2], k),
        ))
    token_rng = np.random.default_rng(seed + 1)
    rows_per_seq = sum(t["n"] // seqs for t in tables)
    seqs_per_part = max(1, ROWS_PER_PART // max(rows_per_seq, 1))
    keys = ("seq", "phase", "step", "pos", "layer", "experts", "probs", "ahead", "ahead_probs")
    for part, s0 in enumerate(range(0, seqs, seqs_per_part)):
        s1 = min(seqs, s0 + seqs_per_part)
        data: dict[str, np.ndarray] = {}
        pieces = []
        for t in tables:
            per = t["n"] // seqs
            pieces.append({k: t[k][s0 * per:s1 * per] for k in keys if t[k] is not None})
            pieces[-1]["stack"] = np.full((s1 - s0) * per, 0 if t["stack"] == "encoder" else 1, np.int8)
        for k in pieces[0]:
            data[k] = pieces[0][k] if len(pieces) == 1 else np.concatenate([pc[k] for pc in pieces])
        if len(pieces) > 1:  # key order: by sequence, encoder rows before decoder rows (stable within)
            order = np.lexsort((data["stack"], data["seq"]))
            data = {k: v[order] for k, v in data.items()}
        n = len(data["seq"])
        table = build_table(
            meta, seq=data["seq"], stack=data["stack"], phase=data["phase"], step=data["step"], pos=data["pos"],
            layer=data["layer"], token=token_rng.integers(0, 32000, size=n), experts=data["experts"],
            probs=data["probs"], ahead=data.get("ahead"), ahead_probs=data.get("ahead_probs"),
        )
        writer.write(part, table)
    return Path(folder)


def make_trace(folder: str | Path, *, seqs: int = 4, prompt_len: int = 4, new_tokens: int = 8, layers: int = 4,
               experts: int = 8, top_k: int = 1, ahead: int = 3, encoder_layers: int = 0, seed: int = 0,
               skew: float = 1.0, stickiness: float = 0.3, ahead_accuracy: float = 0.8,
               meta: TraceMeta | None = None) -> Path:
    """A small test trace: Zipf(``skew``) popularity (shuffled on odd layers), top-1 repeated with
    probability ``stickiness``; ``prompt_len=0`` makes a decode-only trace (no prefill rows).

    ``meta`` replaces the default metadata (any expert shape); its stacks then
    give the layers, experts, top-k and encoder layers, and its ``ahead_distance`` J.
    """
    if meta is None:
        meta = synthetic_meta(layers, experts, top_k, ahead, encoder_layers)
    knobs = Knobs(skew=0.0, zipf=skew, stickiness=stickiness)
    return generate(folder, meta, seqs=seqs, prompt_len=prompt_len, new_tokens=new_tokens, knobs=knobs, seed=seed,
                    ahead_accuracy=ahead_accuracy if meta.ahead_distance else None, permute_odd=True)


def like_meta(name: str, ahead: int = 0) -> TraceMeta:
    """Metadata of a preset's shape (bfloat16 experts, sizes from the model's published dimensions)."""
    p = preset(name)
    meta = synthetic_meta(p.layers, p.experts, p.top_k, ahead, d_model=p.d_model, d_ff=p.d_ff,
                          model_id=f"synthetic-like-{p.name}", activation=p.activation,
                          dense_bytes=2 * p.dense_params, dtype="bfloat16")
    meta.gating = "topk-softmax-renorm"
    meta.stacks["decoder"].block_indices = list(range(p.layers))
    meta.extra = {"synthetic": {"like": p.name, "model_id": p.model_id, "knobs": p.knobs.__dict__, "shape": p.where}}
    return meta


def like_trace(folder: str | Path, like: str, *, seqs: int | None = None, decode_tokens: int | None = None,
               prompt_tokens: int = 0, seed: int = 0, ahead_accuracy: float | Sequence[float] | None = None,
               ahead: int = 3, knobs: Knobs | None = None) -> Path:
    """A decode trace shaped like a real model, with routing statistics tuned to its measured ones.

    ``like``: one of :data:`PRESETS`. The defaults for ``seqs`` and
    ``decode_tokens`` are the size at which the preset was tuned: the in-sample
    transition accuracy is optimistic on a small trace (the gap to the
    cross-validated figure shrinks as the trace grows), every other statistic
    does not depend on the size. ``ahead_accuracy=None`` writes no ``ahead``
    column, as in an imported trace; a number (or one per distance) adds
    ``ahead`` over ``ahead`` distances with that accuracy.
    """
    p = preset(like)
    meta = like_meta(like, ahead if ahead_accuracy is not None else 0)
    return generate(folder, meta, seqs=p.seqs if seqs is None else seqs, prompt_len=prompt_tokens,
                    new_tokens=p.decode_tokens if decode_tokens is None else decode_tokens,
                    knobs=knobs or p.knobs, seed=seed, ahead_accuracy=ahead_accuracy)
