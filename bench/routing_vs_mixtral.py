"""A trace's decode routing statistics next to real Mixtral-8x7B's (ARCHITECTURE.md, "Real routing, measured").

Why: the Mixtral-topology sample stands in for Mixtral's routing in the demo
and in ``recommend``; this says how close it is, statistic by statistic.

* per-layer load: max/mean share of routed slots, normalised entropy;
* L -> L+1 top-1 transition accuracy: the best map from layer l's top-1 expert
  to layer l+1's, in-sample and two-fold cross-validated by sequence, next to
  always guessing l+1's most frequent expert;
* consecutive-token top-k overlap within a layer (uniform independent choice: k/E);
* per-layer LRU hit rate with 2, 4, 6 of 8 experts cached (each layer its own
  cache, each sequence from empty).

usage:
  .venv/bin/python bench/routing_vs_mixtral.py traces/samples/pregate-moe-mixtral-topo
"""

from __future__ import annotations

import sys
from collections import OrderedDict

import numpy as np
import polars as pl

from pregate.traces import open_trace

MIXTRAL = {
    "max/mean load (mean over layers; range)": "1.35 (1.08-1.78)",
    "normalised entropy": "0.988",
    "L->L+1 top-1 transition accuracy, in-sample": "0.41",
    "L->L+1 top-1 transition accuracy, cross-validated": "0.34",
    "most-frequent baseline": "0.23",
    "consecutive-token top-2 overlap (uniform: 0.25)": "0.38",
    "per-layer LRU hit rate, 2 / 4 / 6 of 8 cached": "0.31 / 0.58 / 0.79",
}


def _decode(path) -> tuple[pl.DataFrame, int, int]:
    trace = open_trace(path)
    stack = "decoder" if "decoder" in trace.meta.stacks else next(iter(trace.meta.stacks))
    s = trace.meta.stacks[stack]
    frame = (trace.scan().filter((pl.col("stack") == stack) & (pl.col("phase") == "decode") & ~pl.col("dropped"))
             .select("seq", "step", "pos", "layer", "experts").collect().sort("seq", "pos", "layer"))
    return frame, s.experts, s.moe_layers


def _transition(top1: np.ndarray, seqs: np.ndarray, experts: int, train: np.ndarray, test: np.ndarray):
    """Accuracy of the best l -> l+1 map learned on ``train`` rows, scored on ``test`` rows (over layer pairs)."""
    hits = total = base = 0
    for l in range(top1.shape[1] - 1):
        counts = np.zeros((experts, experts), dtype=np.int64)
        np.add.at(counts, (top1[train, l], top1[train, l + 1]), 1)
        best = counts.argmax(axis=1)
        freq = np.bincount(top1[train, l + 1], minlength=experts).argmax()
        hits += int((best[top1[test, l]] == top1[test, l + 1]).sum())
        base += int((top1[test, l + 1] == freq).sum())
        total += len(test)
    return hits / total, base / total


def stats(path) -> dict[str, str]:
    frame, experts, layers = _decode(path)
    k = len(frame["experts"][0])
    slots = frame.explode("experts")
    load = slots.group_by("layer", "experts").len().group_by("layer").agg(
        (pl.col("len").max() / (pl.col("len").sum() / experts)).alias("mm"),
        (-(pl.col("len") / pl.col("len").sum() * (pl.col("len") / pl.col("len").sum()).log()).sum()
         / np.log(experts)).alias("ent"))
    mm, ent = load["mm"].to_numpy(), load["ent"].to_numpy()
    # one row per token: its experts at every layer
    tokens = frame.group_by("seq", "pos", maintain_order=True).agg(pl.col("experts"), pl.col("layer"))
    tokens = tokens.filter(pl.col("layer").list.len() == layers)
    ids = np.array([[e for e in row] for row in tokens["experts"].to_list()])  # (T, layers, k)
    seqs = tokens["seq"].to_numpy()
    top1 = ids[:, :, 0]
    everything = np.arange(len(top1))
    ins, base = _transition(top1, seqs, experts, everything, everything)
    half = np.isin(seqs, np.unique(seqs)[::2])
    a, _ = _transition(top1, seqs, experts, np.where(half)[0], np.where(~half)[0])
    b, _ = _transition(top1, seqs, experts, np.where(~half)[0], np.where(half)[0])
    # consecutive tokens of one sequence, same layer
    same = seqs[1:] == seqs[:-1]
    overlap = np.mean([len(set(x) & set(y)) / k for t in np.where(same)[0]
                       for x, y in zip(ids[t], ids[t + 1])])
    lru = []
    for size in (2, 4, 6):
        hits = reqs = 0
        for s in np.unique(seqs):
            rows = ids[seqs == s]
            for l in range(layers):
                cache: OrderedDict[int, None] = OrderedDict()
                for e in rows[:, l].ravel().tolist():
                    reqs += 1
                    if e in cache:
                        hits += 1
                        cache.move_to_end(e)
                    else:
                        cache[e] = None
                        if len(cache) > size:
                            cache.popitem(last=False)
        lru.append(hits / reqs)
    return {
        "max/mean load (mean over layers; range)": f"{mm.mean():.2f} ({mm.min():.2f}-{mm.max():.2f})",
        "normalised entropy": f"{ent.mean():.3f}",
        "L->L+1 top-1 transition accuracy, in-sample": f"{ins:.2f}",
        "L->L+1 top-1 transition accuracy, cross-validated": f"{(a + b) / 2:.2f}",
        "most-frequent baseline": f"{base:.2f}",
        f"consecutive-token top-{k} overlap (uniform: {k / experts:.2f})": f"{overlap:.2f}",
        "per-layer LRU hit rate, 2 / 4 / 6 of 8 cached": " / ".join(f"{x:.2f}" for x in lru),
        "_tokens": str(len(top1)),
    }


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    ours = stats(argv[0])
    print(f"decode routing of {argv[0]} ({ours.pop('_tokens')} decode tokens) next to Mixtral-8x7B's\n")
    print("| statistic | this trace | Mixtral-8x7B |")
    print("|---|---|---|")
    for (name, value), ref in zip(ours.items(), MIXTRAL.values()):
        print(f"| {name} | {value} | {ref} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
