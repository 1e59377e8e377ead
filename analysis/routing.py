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

import polars as pl

from pregate.traces import Trace

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
        best_baseline = max(row["chance_top1"], row["most_frequent_top1"])
        row["ratio_to_best_baseline"] = row["top1_accuracy"] / best_baseline if best_baseline else None
        out.append({"distance": j, **row})
    return pl.DataFrame(out)


def routing_stats(trace: Trace) -> dict:
    usage = expert_usage(trace)
    ahead = lookahead_accuracy(trace)
    return {
        "model": trace.meta.model_id,
        "usage": usage.to_dicts(),
        "lookahead": ahead.to_dicts(),
    }
