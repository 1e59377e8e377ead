"""Statistics of recorded routing: how skewed expert use is, how well ``ahead`` predicts.

These numbers say whether a trace has the structure speculation and caching
exploit. Expert-use skew (max/mean share, normalised entropy) per MoE layer
tells how much a cache of the hot experts can hold. Lookahead accuracy tells
how often ``ahead`` at distance j (layer l's hidden state fed to layer l+j's
router) names the expert layer l+j really chose, next to two baselines that
need no hidden state: chance (1/experts) and always guessing the target
layer's most frequent expert. A pre-gating signal is only worth its cost if it
beats both clearly.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from pregate.traces import Trace
from pregate.traces.tokens import TokenRouting, token_routing

TOKEN = ["seq", "stack", "step", "pos"]


def expert_usage(trace: Trace) -> pl.DataFrame:
    """Per (stack, layer): routed tokens, max/mean expert share, normalised entropy, experts never used."""
    meta = trace.meta
    counts = (
        trace.scan()
        .select("stack", "layer", pl.col("experts"))
        .explode("experts")
        .group_by("stack", "layer", "experts")
        .agg(pl.len().alias("n"))
        .collect()
    )
    rows = []
    for (stack, layer), group in counts.group_by("stack", "layer", maintain_order=False):
        experts = meta.stacks[stack].experts
        n = group["n"].to_list()
        total = sum(n)
        shares = [c / total for c in n]
        entropy = -sum(p * math.log(p) for p in shares if p > 0)
        rows.append(
            dict(
                stack=stack,
                layer=layer,
                routed=total,
                max_over_mean=max(n) / (total / experts),
                norm_entropy=entropy / math.log(experts),
                unused=experts - len(n),
            )
        )
    return pl.DataFrame(rows).sort("stack", "layer")


def lookahead_accuracy(trace: Trace) -> pl.DataFrame:
    """Per distance j: top-1 accuracy and recall@n of ``ahead`` against what the later layer chose.

    recall@n (n = max(2, top-k)) is the share of the experts the later layer
    chose that are among the first n predicted. Baselines use the same rows.
    A distance no layer pair of the trace spans (j >= the MoE layers of every
    stack) has no row: the table is shorter, never a row of empty numbers.
    """
    meta = trace.meta
    if meta.ahead_distance == 0:
        return pl.DataFrame()
    frame = trace.scan()
    actual = frame.select(*TOKEN, pl.col("layer").alias("target"), pl.col("experts").alias("chosen"))
    # the most frequent first-choice experts of each (stack, layer), ranked
    ranking = (
        frame.select("stack", pl.col("layer").alias("target"), pl.col("experts").list.first().alias("e"))
        .group_by("stack", "target", "e")
        .agg(pl.len().alias("n"))
        .sort("n", "e", descending=[True, False])
        .group_by("stack", "target", maintain_order=True)
        .agg(pl.col("e").alias("frequent"))
    )
    top_k = {name: s.top_k for name, s in meta.stacks.items()}
    # recall@n needs n predictions per entry: at most what the trace stored
    n_recall = min(max(2, max(top_k.values())), min(meta.ahead_k(s) for s in meta.stacks))
    experts = {name: s.experts for name, s in meta.stacks.items()}
    out = []
    for j in range(1, meta.ahead_distance + 1):
        predicted = frame.filter(pl.col("ahead").list.len() >= j).select(
            *TOKEN, (pl.col("layer") + j).cast(pl.Int16).alias("target"), pl.col("ahead").list.get(j - 1).alias("pred")
        )
        joined = (
            predicted.join(actual, on=[*TOKEN, "target"], how="inner")
            .join(ranking, on=["stack", "target"], how="left")
            .with_columns(
                pl.col("pred").list.head(n_recall).alias("pred_n"),
                pl.col("frequent").list.head(n_recall).alias("freq_n"),
                pl.col("chosen").list.len().alias("k"),
            )
            .with_columns(
                (pl.col("pred").list.first() == pl.col("chosen").list.first()).alias("hit1"),
                (pl.col("frequent").list.first() == pl.col("chosen").list.first()).alias("freq_hit1"),
                (pl.col("chosen").list.set_intersection(pl.col("pred_n")).list.len() / pl.col("k")).alias("recall"),
                (pl.col("chosen").list.set_intersection(pl.col("freq_n")).list.len() / pl.col("k")).alias("freq_recall"),
                pl.col("stack").replace_strict(experts, return_dtype=pl.Float64).alias("E"),
            )
            .select(
                pl.len().alias("rows"),
                pl.col("hit1").mean().alias("top1_accuracy"),
                pl.col("recall").mean().alias(f"recall_at_{n_recall}"),
                (1.0 / pl.col("E")).mean().alias("chance_top1"),
                (n_recall / pl.col("E")).clip(upper_bound=1.0).mean().alias(f"chance_recall_at_{n_recall}"),
                pl.col("freq_hit1").mean().alias("most_frequent_top1"),
                pl.col("freq_recall").mean().alias(f"most_frequent_recall_at_{n_recall}"),
            )
            .collect()
        )
        row = joined.row(0, named=True)
        if not row["rows"]:
            continue  # no layer l+j in any stack (fewer MoE layers than j+1): nothing to score at this distance
        best_baseline = max(row["chance_top1"], row["most_frequent_top1"])
        row["ratio_to_best_baseline"] = row["top1_accuracy"] / best_baseline if best_baseline else None
        out.append({"distance": j, **row})
    return pl.DataFrame(out)


def routing_stats(trace: Trace, seed: int = 0) -> dict:
    usage = expert_usage(trace)
    ahead = lookahead_accuracy(trace)
    return {
        "model": trace.meta.model_id,
        "usage": usage.to_dicts(),
        "lookahead": ahead.to_dicts(),
        "tokens": token_stats(trace, seed),
    }


def expert_counts(trace: Trace) -> pl.DataFrame:
    """Per (stack, layer, expert): tokens routed there and their share of the layer (every expert, zeros kept)."""
    counts = (
        trace.scan()
        .select("stack", "layer", pl.col("experts").alias("expert"))
        .explode("expert")
        .group_by("stack", "layer", "expert")
        .agg(pl.len().alias("n"))
        .collect()
    )
    grid = pl.DataFrame(
        [
            {"stack": name, "layer": layer, "expert": e}
            for name, s in trace.meta.stacks.items()
            for layer in range(s.moe_layers)
            for e in range(s.experts)
        ],
        schema={"stack": pl.String, "layer": counts["layer"].dtype, "expert": counts["expert"].dtype},
    )
    out = grid.join(counts, on=["stack", "layer", "expert"], how="left").with_columns(pl.col("n").fill_null(0))
    return out.with_columns((pl.col("n") / pl.col("n").sum().over("stack", "layer")).fill_nan(0.0).alias("share")).sort(
        "stack", "layer", "expert"
    )


def transition_counts(trace: Trace) -> pl.DataFrame:
    """Per (stack, layer l, expert at l, expert at l+1): tokens that went from one to the other.

    Every pair of the two layers' top-k choices of the same token counts once
    (for top-1 routing, the single expert at each layer).
    """
    frame = trace.scan().select(*TOKEN, "layer", "experts")
    later = frame.select(*TOKEN, (pl.col("layer") - 1).cast(pl.Int16).alias("layer"), pl.col("experts").alias("dst"))
    return (
        frame.rename({"experts": "src"})
        .join(later, on=[*TOKEN, "layer"], how="inner")
        .explode("src")
        .explode("dst")
        .group_by("stack", "layer", "src", "dst")
        .agg(pl.len().alias("n"))
        .sort("stack", "layer", "src", "dst")
        .collect()
    )


def transition_predictability(transitions: pl.DataFrame) -> pl.DataFrame:
    """Per (stack, layer): how often the most frequent successor of layer l's expert is layer l+1's expert.

    The ceiling of a transition-matrix predictor that knows the whole trace
    (a learned-online one does worse), next to always guessing layer l+1's most
    frequent expert.
    """
    if transitions.is_empty():
        return pl.DataFrame()
    best_given_src = (
        transitions.group_by("stack", "layer", "src").agg(pl.col("n").max().alias("best"), pl.col("n").sum().alias("tot"))
        .group_by("stack", "layer").agg(pl.col("best").sum(), pl.col("tot").sum())
    )
    best_dst = (
        transitions.group_by("stack", "layer", "dst").agg(pl.col("n").sum())
        .group_by("stack", "layer").agg(pl.col("n").max().alias("freq"))
    )
    return (
        best_given_src.join(best_dst, on=["stack", "layer"])
        .select("stack", "layer", (pl.col("best") / pl.col("tot")).alias("transition_top1"),
                (pl.col("freq") / pl.col("tot")).alias("most_frequent_top1"))
        .sort("stack", "layer")
    )


# ---- token-level statistics: transitions, overlap, LRU curves -----------------------------------

LRU_FRACTIONS = (0.125, 0.25, 0.5, 0.75)


def lru_sizes(experts: int, fractions=LRU_FRACTIONS) -> list[int]:
    """Cache sizes (experts per layer) for the LRU curve: the given fractions of a layer's experts."""
    return sorted({max(1, min(experts, int(round(f * experts)))) for f in fractions})


def split_folds(seqs: np.ndarray, seed: int = 0) -> np.ndarray:
    """(T,) fold 0 or 1 of each token: sequences shuffled with ``seed``, the first half is fold 0."""
    unique = np.unique(seqs)
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = np.zeros(len(unique), dtype=np.int8)
    fold_of[order[len(unique) // 2:]] = 1
    return fold_of[np.searchsorted(unique, seqs)]


def _best_successor(counts: np.ndarray) -> np.ndarray:
    """(E,) per source expert the most frequent successor (lowest id on ties; the marginal's for an unseen source)."""
    best = counts.argmax(axis=1)
    unseen = counts.sum(axis=1) == 0
    best[unseen] = counts.sum(axis=0).argmax()
    return best


def transition_accuracy(tr: TokenRouting, seed: int = 0) -> list[dict]:
    """Per layer pair l -> l+1: how often the most frequent successor of l's top-1 is l+1's top-1.

    ``in_sample``: the table is counted on every token and scored on the same
    tokens (optimistic on a small trace); ``cross_validated``: 2 folds by
    sequence (seeded), each scored with the table of the other; ``marginal``:
    always guessing layer l+1's most frequent top-1.
    """
    e = tr.experts_per_layer
    top1 = tr.experts[:, :, 0].astype(np.int64)
    fold = split_folds(tr.seq, seed)
    out = []
    for layer in range(top1.shape[1] - 1):
        src, dst = top1[:, layer], top1[:, layer + 1]
        ok = (src >= 0) & (dst >= 0)
        if not ok.any():
            continue
        s, d, f = src[ok], dst[ok], fold[ok]
        counts = np.bincount(s * e + d, minlength=e * e).reshape(e, e)
        in_sample = counts.max(axis=1).sum() / len(s)
        marginal = counts.sum(axis=0).max() / len(s)
        correct = 0
        scored = 0
        for k in (0, 1):
            train, test = f != k, f == k
            if not train.any() or not test.any():
                continue
            c = np.bincount(s[train] * e + d[train], minlength=e * e).reshape(e, e)
            correct += int((_best_successor(c)[s[test]] == d[test]).sum())
            scored += int(test.sum())
        out.append(dict(stack=tr.stack, layer=layer, tokens=int(len(s)), in_sample=float(in_sample),
                        cross_validated=float(correct / scored) if scored else float("nan"),
                        marginal=float(marginal)))
    return out


def token_overlap(tr: TokenRouting) -> list[dict]:
    """Per layer: mean share of a token's experts that the previous token of its sequence also chose."""
    x = tr.experts
    prev_ok = ~tr.first_of_seq
    a, b = x[1:][prev_ok[1:]], x[:-1][prev_ok[1:]]  # (P, L, k)
    k = x.shape[2]
    same = (a[:, :, :, None] == b[:, :, None, :]) & (a[:, :, :, None] >= 0)
    shared = same.any(axis=3).sum(axis=2)
    valid = (a >= 0).all(axis=2) & (b >= 0).all(axis=2)
    out = []
    for layer in range(x.shape[1]):
        v = valid[:, layer]
        if v.any():
            out.append(dict(stack=tr.stack, layer=layer, pairs=int(v.sum()),
                            overlap=float(shared[v, layer].mean() / k)))
    return out


def lru_hits(tr: TokenRouting, sizes: list[int], per_sequence: bool, chunk: int = 65536) -> list[dict]:
    """Per layer and cache size C: hit rate of a plain per-layer LRU cache of C experts.

    The requests are each token's experts, tokens in sequence order, a
    token's experts best first, one after the other: the textbook LRU over
    that request sequence (what libCacheSim counts), so a token's first miss
    may evict the expert its next slot wants. A request hits when fewer than C
    distinct experts were requested since the expert's last request (its
    stack distance). The simulator's cache differs at small sizes: there a
    token's experts are requested together and one in use is never evicted.
    ``per_sequence`` empties the cache at each sequence's first token.
    """
    t_n, layers, k = tr.experts.shape
    e = tr.experts_per_layer
    floor = np.maximum.accumulate(np.where(tr.first_of_seq, np.arange(t_n), 0)) * k if per_sequence else None
    out = []
    for layer in range(layers):
        hits = np.zeros(len(sizes), dtype=np.int64)
        requests = 0
        carry = np.full(e, -1, dtype=np.int64)
        for c0 in range(0, t_n, chunk):
            ch = tr.experts[c0:c0 + chunk, layer].astype(np.int64)  # (n, k)
            n = len(ch)
            stamp = np.full((n, e), -1, dtype=np.int64)
            rows = np.repeat(np.arange(n), k).reshape(n, k)
            valid = ch >= 0
            stamp[rows[valid], ch[valid]] = ((np.arange(n)[:, None] + c0) * k + np.arange(k)[None, :])[valid]
            last = np.maximum.accumulate(np.vstack([carry[None, :], stamp]), axis=0)
            before = last[:-1]  # last use of every expert before each token
            carry = last[-1]
            if floor is not None:
                before = np.where(before >= floor[c0:c0 + n, None], before, -1)
            mine = np.take_along_axis(before, np.where(valid, ch, 0), axis=1)  # (n, k)
            rank = (before[:, None, :] > mine[:, :, None]).sum(axis=2)  # experts used more recently
            # ... plus this token's earlier slots whose experts were not already counted
            rank += np.tril(mine[:, None, :] < mine[:, :, None], k=-1).sum(axis=2) if k > 1 else 0
            present = valid & (mine >= 0)
            for i, size in enumerate(sizes):
                hits[i] += int((present & (rank < size)).sum())
            requests += int(valid.sum())
        if requests:
            out.append(dict(stack=tr.stack, layer=layer, requests=requests,
                            **{f"hit_at_{s}": float(h / requests) for s, h in zip(sizes, hits)}))
    return out


def _mean(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if r.get(key) is not None and not math.isnan(r[key])]
    return float(sum(values) / len(values)) if values else float("nan")


def token_stats(trace: Trace, seed: int = 0, fractions=LRU_FRACTIONS) -> list[dict]:
    """Per stack: per-layer rows and layer averages of transitions, overlap and both LRU curves."""
    out = []
    usage = expert_usage(trace)
    for tr in token_routing(trace):
        sizes = lru_sizes(tr.experts_per_layer, fractions)
        trans = transition_accuracy(tr, seed)
        overlap = token_overlap(tr)
        lru = lru_hits(tr, sizes, per_sequence=False)
        lru_seq = lru_hits(tr, sizes, per_sequence=True)
        use = usage.filter(pl.col("stack") == tr.stack)
        lengths = np.bincount(np.unique(tr.seq, return_inverse=True)[1])
        out.append(dict(
            stack=tr.stack, tokens=tr.n_tokens, sequences=int(len(lengths)), mean_seq_tokens=float(lengths.mean()),
            experts=tr.experts_per_layer, top_k=int(tr.experts.shape[2]), lru_sizes=sizes,
            mean=dict(
                max_over_mean=float(use["max_over_mean"].mean()), norm_entropy=float(use["norm_entropy"].mean()),
                transition_in_sample=_mean(trans, "in_sample"), transition_cv=_mean(trans, "cross_validated"),
                transition_marginal=_mean(trans, "marginal"), overlap=_mean(overlap, "overlap"),
                overlap_uniform=float(tr.experts.shape[2] / tr.experts_per_layer),
                **{f"lru_hit_at_{s}": _mean(lru, f"hit_at_{s}") for s in sizes},
                **{f"lru_seq_hit_at_{s}": _mean(lru_seq, f"hit_at_{s}") for s in sizes},
            ),
            transitions=trans, overlap=overlap, lru=lru, lru_per_sequence=lru_seq,
        ))
    return out
