"""Plots of sweep results and routing statistics (matplotlib, Agg backend: no display needed).

Every function takes polars frames (from :mod:`pregate.simulator.sweep`,
:mod:`pregate.analysis.routing` or :mod:`pregate.analysis.locality`) and returns
a matplotlib Figure; :func:`png` turns one into PNG bytes.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
# An axis with an offset (+1.32 ms, ticks of 0.0001) pictures rounding noise as if it were a result.
matplotlib.rcParams["axes.formatter.useoffset"] = False

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from pregate.simulator.ranking import with_labels  # noqa: E402

OVER_STYLE = dict(marker="x", s=46, color="red", linewidths=1.4, zorder=4)


def memory_limit(frame: pl.DataFrame) -> float | None:
    """GPU bytes left for dense weights + cache once the working margin is kept free (None: unknown)."""
    if "gpu_memory_bytes" not in frame.columns or "working_margin_bytes" not in frame.columns:
        return None
    mem, margin = frame["gpu_memory_bytes"].drop_nulls(), frame["working_margin_bytes"].drop_nulls()
    if mem.is_empty() or margin.is_empty():
        return None
    return float(mem.min() - margin.max())

MAX_POLICIES = 8


def png(fig, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (and closed, so that many plots do not pile up in memory)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="0.4", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def pareto_front(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both (lower x and lower y), by increasing x."""
    order = np.lexsort((ys, xs))
    keep, best = [], np.inf
    for i in order:
        if ys[i] < best:
            keep.append(i)
            best = ys[i]
    return np.array(keep, dtype=np.int64)


def plot_pareto(results: pl.DataFrame, title: str = "") -> "plt.Figure":
    """Mean step latency against peak GPU memory: each policy's Pareto front, the overall front, the bounds."""
    frame = with_labels(results).filter(pl.col("buffering") != "resident")
    fig, ax = plt.subplots(figsize=(8, 5))
    if frame.is_empty():
        _note(ax, "no offloaded points in these results")
        return fig
    unit, scale = ("GB", 1.0) if frame["gpu_gb"].max() >= 1 else ("MB", 1e3)
    frame = frame.with_columns(pl.col("gpu_gb") * scale)
    best = (frame.group_by("policy").agg(pl.col("mean_step_latency_s").min().alias("m"))
            .sort(["m", "policy"]).head(MAX_POLICIES)["policy"].to_list())
    cmap = plt.get_cmap("tab10")
    for i, policy in enumerate(best):
        part = frame.filter(pl.col("policy") == policy)
        xs, ys = part["gpu_gb"].to_numpy(), part["mean_step_latency_s"].to_numpy() * 1e3
        front = pareto_front(xs, ys)
        ax.plot(xs[front], ys[front], marker="o", ms=4, lw=1.4, color=cmap(i % 10), label=policy, drawstyle="steps-post")
        ax.scatter(xs, ys, s=8, color=cmap(i % 10), alpha=0.35)
    xs, ys = frame["gpu_gb"].to_numpy(), frame["mean_step_latency_s"].to_numpy() * 1e3
    front = pareto_front(xs, ys)
    ax.plot(xs[front], ys[front], color="black", lw=2.2, alpha=0.5, label="best of all policies", drawstyle="steps-post")
    over = frame["over_memory"].to_numpy()
    if over.any():
        ax.scatter(xs[over], ys[over], label="OVER MEMORY (does not fit the GPU)", **OVER_STYLE)
    limit = memory_limit(frame)
    if limit is not None and over.any():
        ax.axvline(limit / 1e9 * scale, color="red", ls="-.", lw=1,
                   label=f"GPU memory less working margin ({limit / 1e9:.1f} GB)")
    resident = frame["bound_resident_mean_step_latency_s"].min() * 1e3
    ax.axhline(resident, color="green", ls="--", lw=1, label=f"all-resident bound ({resident:.2f} ms)")
    oracle = frame.group_by("gpu_gb").agg(pl.col("bound_oracle_mean_step_latency_s").min()).sort("gpu_gb")
    ax.plot(oracle["gpu_gb"], oracle["bound_oracle_mean_step_latency_s"] * 1e3, color="purple", ls=":", marker="x",
            lw=1, label="perfect-prediction reference (oracle + Belady)")
    ax.set_xlabel(f"peak GPU memory ({unit}): dense weights + expert cache")
    ax.set_ylabel("mean decode step latency (ms)")
    ax.set_ylim(bottom=0)
    ax.set_title(title or "latency against GPU memory (Pareto front per policy)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    return fig


def plot_latency_breakdown(results: pl.DataFrame, top: int = 12, include_over_memory: bool = False,
                           title: str = "") -> "plt.Figure":
    """Stacked bars of compute, transfer stall and dispatch (host-bound) time per forward pass, fastest points."""
    from pregate.simulator.ranking import rank

    ranked = rank(results, include_over_memory=include_over_memory).head(top)
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.35 * ranked.height + 1)))
    if ranked.is_empty():
        _note(ax, "no points")
        return fig
    passes = (ranked["steps"] + ranked["prefill_passes"]).to_numpy().clip(min=1)
    many = "priced_as" in ranked.columns and (ranked["priced_as"].n_unique() > 1
                                              or ranked["gpu_dtype"].n_unique() > 1)
    labels = [(f"{m}, {d}: " if many else "") + f"{p} @ {c}" + (" (OVER MEMORY)" if o else "")
              for m, d, p, c, o in zip(ranked["priced_as"] if many else ranked["policy"],
                                       ranked["gpu_dtype"] if many else ranked["policy"],
                                       ranked["policy"], ranked["cache"], ranked["over_memory"])]
    y = np.arange(ranked.height)[::-1]
    left = np.zeros(ranked.height)
    for col, color, name in (("compute_s", "#4c72b0", "compute"), ("stall_s", "#dd8452", "stall (copies, CPU-run experts)"),
                             ("dispatch_s", "#8c8c8c", "dispatch (host)")):
        ms = ranked[col].to_numpy() / passes * 1e3
        ax.barh(y, ms, left=left, color=color, label=name)
        left += ms
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xlabel("ms per forward pass (whole trace, prefill included)")
    ax.set_title(f"latency breakdown of the fastest points{': ' + title if title else ''}", fontsize=9)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.4 / max(1, ranked.height)), ncol=3)
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_expert_usage(counts: pl.DataFrame) -> "plt.Figure":
    """Heatmap of each expert's share of its layer's routed tokens (rows: MoE layers of each stack)."""
    stacks = counts["stack"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(len(stacks), 1, figsize=(8, 1.2 + 2.6 * len(stacks)), squeeze=False)
    for ax, stack in zip(axes[:, 0], stacks):
        part = counts.filter(pl.col("stack") == stack)
        layers, experts = part["layer"].max() + 1, part["expert"].max() + 1
        grid = np.zeros((layers, experts))
        grid[part["layer"].to_numpy(), part["expert"].to_numpy()] = part["share"].to_numpy()
        im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_ylabel(f"{stack} MoE layer")
        ax.set_xlabel("expert")
        fig.colorbar(im, ax=ax, label="share of tokens")
    axes[0, 0].set_title("expert usage per layer (uniform = 1/experts)")
    return fig


def plot_transitions(transitions: pl.DataFrame, max_pairs: int = 4) -> "plt.Figure":
    """Row-normalised transition matrices P(expert at l+1 | expert at l) for the first layer pairs."""
    if transitions.is_empty():
        fig, ax = plt.subplots(figsize=(6, 3))
        _note(ax, "no layer pairs (a single MoE layer)")
        return fig
    # decoder pairs first: decode steps are what a user waits for (an encoder runs once per prompt)
    pairs = (transitions.select("stack", "layer").unique()
             .sort(pl.col("stack") != "decoder", "stack", "layer").select("stack", "layer"))
    pairs = pairs.head(max_pairs)
    n = pairs.height
    fig, axes = plt.subplots(1, n, figsize=(3.3 * n + 1.0, 3.6), squeeze=False, layout="constrained")
    size = int(max(transitions["src"].max(), transitions["dst"].max())) + 1
    im = None
    for ax, (stack, layer) in zip(axes[0], pairs.iter_rows()):
        part = transitions.filter((pl.col("stack") == stack) & (pl.col("layer") == layer))
        grid = np.zeros((size, size))
        grid[part["src"].to_numpy(), part["dst"].to_numpy()] = part["n"].to_numpy()
        rows = grid.sum(axis=1, keepdims=True)
        grid = np.divide(grid, rows, out=np.zeros_like(grid), where=rows > 0)
        im = ax.imshow(grid, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{stack} {layer} -> {layer + 1}", fontsize=9)
        ax.set_xlabel(f"expert at layer {layer + 1}")
        ax.set_ylabel(f"expert at layer {layer}" if ax is axes[0][0] else "")
    fig.colorbar(im, ax=list(axes[0]), label="P(next | this)")
    fig.suptitle("expert transitions between consecutive MoE layers")
    return fig


def plot_lookahead_accuracy(accuracy: pl.DataFrame) -> "plt.Figure":
    """Top-1 accuracy and recall of ``ahead`` by lookahead distance, next to chance and most-frequent."""
    fig, ax = plt.subplots(figsize=(7, 4))
    if accuracy.is_empty():
        _note(ax, "no 'ahead' column in this trace (recorded with --ahead 0 or imported)")
        return fig
    d = accuracy["distance"].to_numpy()
    recall = next(c for c in accuracy.columns if c.startswith("recall_at_"))
    w = 0.25
    ax.bar(d - w, accuracy["top1_accuracy"], w, label="ahead top-1", color="#4c72b0")
    ax.bar(d, accuracy["most_frequent_top1"], w, label="most frequent expert", color="#dd8452")
    ax.bar(d + w, accuracy["chance_top1"], w, label="chance", color="#8c8c8c")
    ax.plot(d, accuracy[recall], "k-o", ms=4, label=f"ahead {recall.replace('_', ' ')}")
    ax.set_xticks(d, [f"j = {j}" for j in d])
    ax.set_xlabel("lookahead distance (layer l predicts layer l + j)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title("accuracy of the pre-gating signal by lookahead distance")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4)
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_lru_curve(curve: pl.DataFrame, results: pl.DataFrame | None = None) -> "plt.Figure":
    """LRU hit rate by cache size (stack distances), with the simulated policies' hit rates on top."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(curve["cache_share"] * 100, curve["hit_rate"], "k-", lw=1.8, label="LRU, no prefetch (stack distances)")
    if results is not None and not results.is_empty() and "cache_capacity_experts" in results.columns:
        frame = with_labels(results).filter(pl.col("buffering") != "resident")
        total = curve["cache_experts"].max()
        best = (frame.group_by("policy").agg(pl.col("hit_rate").max().alias("h")).sort(["h", "policy"], descending=[True, False])
                .head(MAX_POLICIES)["policy"].to_list())
        cmap = plt.get_cmap("tab10")
        for i, policy in enumerate(best):
            part = frame.filter(pl.col("policy") == policy).group_by("cache_capacity_experts").agg(
                pl.col("hit_rate").mean()).sort("cache_capacity_experts")
            ax.plot(part["cache_capacity_experts"] / total * 100, part["hit_rate"], "o--", ms=4, lw=1,
                    color=cmap(i % 10), label=f"simulated: {policy}")
        over = frame.filter(pl.col("over_memory") & pl.col("policy").is_in(best))
        if not over.is_empty():
            ax.scatter(over["cache_capacity_experts"].to_numpy() / total * 100, over["hit_rate"].to_numpy(),
                       label="OVER MEMORY (does not fit the GPU)", **OVER_STYLE)
    ax.set_xlabel("GPU expert cache (% of all experts)")
    # the simulated rates count late hits (in flight when needed) with the hits, as a cache count does
    ax.set_ylabel("hit rate (late hits included)")
    ax.set_ylim(0, 1.02)
    ax.set_title("hit rate by cache size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def plot_hit_rate_per_layer(per_layer: pl.DataFrame, n_objects: int | None = None,
                            over_sizes: set[int] | None = None) -> "plt.Figure":
    """LRU hit rate of each MoE layer's requests, one line per cache size (one global cache).

    ``over_sizes``: cache sizes (in experts) that do not fit the GPU in the results; their lines are dashed
    and labelled OVER MEMORY.
    """
    fig, ax = plt.subplots(figsize=(7, 4))
    sizes = per_layer["cache_experts"].unique().sort().to_list()
    styles = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-"), ("P", "--")]
    for i, size in enumerate(sizes):
        part = per_layer.filter(pl.col("cache_experts") == size).sort("layer")
        over = bool(over_sizes and size in over_sizes)
        label = (f"{size} experts" + (f" ({size / n_objects:.0%})" if n_objects else "")
                 + (" OVER MEMORY" if over else ""))
        marker, line = styles[i % len(styles)]
        # a small sideways shift and its own marker and dash: equal lines stay visible, not hidden
        shift = (i - (len(sizes) - 1) / 2) * 0.08
        if over:
            ax.plot(part["layer"].to_numpy() + shift, part["hit_rate"], marker="x", linestyle="--", ms=5,
                    color="red", label=label)
            continue
        ax.plot(part["layer"].to_numpy() + shift, part["hit_rate"], marker=marker, linestyle=line, ms=5,
                mfc="none", label=label)
    ax.set_xlabel("MoE layer (global: encoder layers first)")
    ax.set_ylabel("LRU hit rate")
    ax.set_ylim(0, 1.02)
    ax.set_title("hit rate per layer (LRU, one global cache, no prefetch)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_sim_vs_measured(pairs: pl.DataFrame, measured: str = "measured_s", simulated: str = "simulated_s",
                         label: str | None = "label", group: str | None = "group",
                         title: str | None = None) -> "plt.Figure":
    """Simulated against measured step latency (one point per setting), with y = x and a +-10% band.

    ``pairs`` has one row per setting with the measured and the simulated
    latency in seconds (the executor's validation fills it). Points are
    coloured by ``group`` when that column exists (a trace and batch size,
    say); ``label`` names each point when there are few enough to read.
    Both axes are logarithmic: latencies span orders of magnitude, and equal
    relative errors then look equal.
    """
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    if pairs.is_empty():
        _note(ax, "no measurements yet: run the executor's validation")
        return fig
    m, s = pairs[measured].to_numpy() * 1e3, pairs[simulated].to_numpy() * 1e3
    lo, hi = float(min(m.min(), s.min())) * 0.8, float(max(m.max(), s.max())) * 1.25
    line = np.geomspace(lo, hi, 50)
    ax.fill_between(line, line * 0.9, line * 1.1, color="green", alpha=0.12, label="+-10%")
    ax.plot(line, line, "g-", lw=1, label="simulated = measured")
    if group and group in pairs.columns:
        groups = pairs[group].to_list()
        for name in dict.fromkeys(groups):
            keep = np.array([g == name for g in groups])
            ax.scatter(m[keep], s[keep], s=18, zorder=3, label=str(name))
    else:
        ax.scatter(m, s, s=18, color="#4c72b0", zorder=3)
    if label and label in pairs.columns and len(pairs) <= 16:
        for x, y, text in zip(m, s, pairs[label].to_list()):
            ax.annotate(str(text), (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    err = np.abs(s - m) / m
    ax.set_title(title or f"simulated vs measured step latency ({len(m)} settings)\nmedian |error| "
                          f"{np.median(err):.1%}, p95 {np.percentile(err, 95):.1%}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured (ms)")
    ax.set_ylabel("simulated (ms)")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left")
    return fig


def plot_bands(ranked: pl.DataFrame, top: int = 15) -> "plt.Figure":
    """Tokens/s of the fastest points with the low-high band of their profiles' ranges (``--uncertainty``)."""
    frame = ranked.filter(pl.col("tokens_per_s_low").is_not_null()).head(top)
    fig, ax = plt.subplots(figsize=(8, 0.35 * max(len(frame), 3) + 1.2))
    if frame.is_empty():
        _note(ax, "no point of these results was priced with --uncertainty")
        return fig
    labels = [f"{p} @ {c}" + ("" if comp == "none" else f" {comp}")
              for p, c, comp in zip(frame["policy"], frame["cache"], frame["compression"])]
    y = np.arange(len(frame))[::-1]
    mid = frame["tokens_per_s"].to_numpy()
    lo, hi = frame["tokens_per_s_low"].to_numpy(), frame["tokens_per_s_high"].to_numpy()
    ax.barh(y, hi - lo, left=lo, height=0.5, color="tab:blue", alpha=0.3, label="band (profiles' ranges)")
    ax.scatter(mid, y, color="tab:blue", zorder=3, s=14, label="nominal values")
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xlabel("decode tokens/s")
    ax.set_title("how sure: tokens/s across the ranges of the profiles' values")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def plot_placements(best: pl.DataFrame, title: str = "") -> "plt.Figure":
    """Tokens/s against cache size: the best GPU expert cache (host-independent) and each CPU placement per host.

    ``best`` has one row per (placement label, host, cache size): the columns
    ``label``, ``host``, ``cache_capacity_experts``, ``tokens_per_s`` (what
    :func:`pregate.analysis.report.placement_points` returns).
    """
    fig, ax = plt.subplots(figsize=(8, 5))
    if best.is_empty():
        _note(ax, "no placement points in these results")
        return fig
    cmap = plt.get_cmap("tab10")
    hosts = sorted(h for h in best["host"].unique().to_list() if h)
    styles = ["-", "--", ":", "-."]
    labels = sorted(best["label"].unique().to_list())
    for i, label in enumerate(labels):
        for j, host in enumerate(["", *hosts]):
            part = best.filter((pl.col("label") == label) & (pl.col("host") == host)).sort("cache_capacity_experts")
            if part.is_empty():
                continue
            gpu = host == ""
            ax.plot(part["cache_capacity_experts"], part["tokens_per_s"], marker="o", ms=4,
                    color="black" if gpu else cmap(i % 10), ls="-" if gpu else styles[(j - 1) % len(styles)],
                    lw=2 if gpu else 1.3,
                    label=label if gpu else f"{label} on {host}")
    ax.set_xlabel("experts on the GPU (cache size)")
    ax.set_ylabel("decode tokens/s")
    ax.set_ylim(bottom=0)
    ax.set_title(title or "where each placement wins, by cache size and host", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return fig
