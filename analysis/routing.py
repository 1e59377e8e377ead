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
