"""A report of sweep results: one self-contained HTML page and a Markdown summary.

The HTML page embeds every image as a base64 ``data:`` URI and its style
inline, so it opens offline and can be mailed as one file; it references
nothing outside itself. The Markdown summary holds the same tables and links
the same images, written as PNG files next to it (``figures/``).

Sections: the ranking (fastest points, with their ratio to both bounds), the
best point of each policy, latency against GPU memory (the Pareto front per
policy), the latency breakdown, and, for each trace that is still readable,
its routing: expert usage, layer-to-layer transitions, accuracy of the
pre-gating signal by lookahead distance, LRU hit rate by cache size and per
layer. With measured latencies (from the executor), a simulated-vs-measured plot.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from pregate.simulator.ranking import fitting, format_ranking, rank, with_labels

MAX_GROUPS = 8
MAX_TRACES = 2


@dataclass
class Figure:
    id: str
    title: str
    caption: str
    png: bytes


@dataclass
class Section:
    title: str
    text: str = ""
    tables: list[tuple[str, pl.DataFrame]] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    # answer blocks (the demo's): a heading line, then indented lines
    answers: list[list[str]] = field(default_factory=list)


@dataclass
class ReportFiles:
    html: Path
    markdown: Path
    figures: list[str]


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:
            return ""
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3f}"
    return str(value)


def _decode(frame: pl.DataFrame, name: str) -> pl.Series:
    """The decode-only column (on-time hits apart from late ones); results stored before per-phase
    columns existed fall back to the all-passes column, or nulls."""
    col = f"decode_{name}"
    if col in frame.columns and frame[col].null_count() < frame.height:
        return frame[col]
    return frame[name] if name in frame.columns else pl.Series(col, [None] * frame.height, dtype=pl.Float64)
FLAT = 0.01  # a plot whose points all lie within 1% of each other pictures noise: say so in words instead


def _mem(flag) -> str:
    return "OVER MEMORY" if flag else "fits"


def _ranking_table(ranked: pl.DataFrame, limit: int = 20) -> pl.DataFrame:
    head = ranked.head(limit)
    cols = {
        "policy": head["policy"],
        "cache": [f"{c} ({n} experts)" for c, n in zip(head["cache"], head["cache_capacity_experts"])],
        "tokens/s": head["tokens_per_s"],
        "decode stall share": _decode(head, "stall_share"),
        "decode hits": _decode(head, "hit_rate"),
        "decode late hits": _decode(head, "late_hit_rate"),
        "MB moved": head["bytes_moved"] / 1e6,
        "GPU GB": head["gpu_gb"],
        "memory": [_mem(f) for f in head["over_memory"]],
        "x all-resident": head["ratio_to_resident"],
        "x oracle": head["ratio_to_oracle"],
    }
    front = {}
    for name, col in (("priced as", "priced_as"), ("dtype", "gpu_dtype"), ("profile", "profile"),
                      ("runtime", "runtime"), ("batch", "batch_size")):
        if col in ranked.columns and ranked[col].n_unique() > 1:
            front[name] = head[col]
    return pl.DataFrame({**front, **cols})


def _best_per_policy(ranked: pl.DataFrame) -> pl.DataFrame:
    keys = [k for k in ("pricing", "gpu_dtype", "runtime") if k in ranked.columns]
    best = ranked.unique(["policy", *keys], keep="first", maintain_order=True)
    front = {}
    for name, col in (("priced as", "priced_as"), ("dtype", "gpu_dtype"), ("runtime", "runtime")):
        if col in best.columns and best[col].n_unique() > 1:
            front[name] = best[col]
    return pl.DataFrame({
        **front,
        "policy": best["policy"],
        "best cache": best["cache"],
        "tokens/s": best["tokens_per_s"],
        "decode stall share": _decode(best, "stall_share"),
        "decode hits": _decode(best, "hit_rate"),
        "decode late hits": _decode(best, "late_hit_rate"),
        "memory": [_mem(f) for f in best["over_memory"]],
        "x all-resident": best["ratio_to_resident"],
        "x oracle": best["ratio_to_oracle"],
    })


GROUP_KEYS = ("pricing", "profile", "runtime", "batch_size", "gpu_dtype")


def groups(frame: pl.DataFrame) -> list[tuple[str, pl.DataFrame]]:
    """The parts of a result set that one plot can show: one pricing, profile, batch size and GPU dtype."""
    frame = with_labels(frame)
    keys = [k for k in GROUP_KEYS if k in frame.columns]
    out = []
    for values, part in frame.group_by(keys, maintain_order=True):
        named = dict(zip(keys, values))
        name = f"{named['pricing']}, on {named['profile']}"
        if "runtime" in named:
            name += f" ({named['runtime'] or 'default'} runtime)"
        name += f", batch {named['batch_size']}"
        if "gpu_dtype" in named:
            name += f", {named['gpu_dtype']}"
        out.append((name, part))
    return out[:MAX_GROUPS]


def _band_section(ranked: pl.DataFrame) -> Section:
    """The bands of ``--uncertainty`` and whether the fastest point stays the fastest in every pricing."""
    import json

    from pregate.analysis import plots

    priced = ranked.filter(pl.col("tokens_per_s_low").is_not_null())
    best = priced.row(0, named=True)
    mine = json.loads(best["uncertainty_tokens_per_s"])
    beaten = []
    for row in priced.iter_rows(named=True):
        if row["key"] != best["key"]:
            theirs = json.loads(row["uncertainty_tokens_per_s"])
            if any(t > m for t, m in zip(theirs, mine)):
                beaten.append(row["policy"] + " @ " + row["cache"])
    verdict = ("It stays the fastest in every pricing of the band." if not beaten else
               f"It does NOT stay the fastest everywhere: {', '.join(beaten[:5])} beat it in some pricing "
               "(pregate recommend --uncertainty names the value that decides it).")
    text = (f"Each point was priced at {best['uncertainty']} of the ranges of its {best['uncertainty_values']} "
            f"estimated and derived profile values. The fastest, {best['policy']} @ {best['cache']}, makes "
            f"{best['tokens_per_s_low']:.1f} to {best['tokens_per_s_high']:.1f} tokens/s "
            f"({best['mean_step_latency_s_low'] * 1e3:.2f} to {best['mean_step_latency_s_high'] * 1e3:.2f} ms per "
            f"step). {verdict}")
    table = pl.DataFrame({"policy": priced["policy"].head(15), "cache": priced["cache"].head(15),
                          "tokens/s": priced["tokens_per_s"].head(15),
                          "low": priced["tokens_per_s_low"].head(15), "high": priced["tokens_per_s_high"].head(15)})
    return Section("How sure", text, tables=[("bands of the fastest points", table)],
                   figures=[Figure("bands", "tokens/s bands", "tokens/s of the fastest points across the profiles' "
                                   "ranges", plots.png(plots.plot_bands(priced)))])


def spread(values) -> float:
    """(max - min) / min of the positive values: how far apart a plot's points are."""
    xs = [v for v in values if v is not None and v == v and v > 0]
    if len(xs) < 2:
        return 0.0
    return (max(xs) - min(xs)) / min(xs)


def flat_text(part: pl.DataFrame) -> str:
    lat = part["mean_step_latency_s"].to_list()
    return (f"All {part.height} points lie within 1% of each other ({min(lat) * 1e3:.3f} to {max(lat) * 1e3:.3f} ms "
            f"per decode step, {spread(lat):.2%} apart): no policy or cache size changes the latency here, so "
            f"there is no plot of it (it would show rounding noise).")


def results_sections(frame: pl.DataFrame, include_over_memory: bool = False) -> list[Section]:
    from pregate.analysis import plots

    ranked = rank(frame, include_over_memory=include_over_memory)
    eligible = fitting(ranked, include_over_memory)
    over = int(ranked["over_memory"].sum())
    over_text = (f" {over} point(s) do not fit the GPU's memory (dense weights + expert cache + working margin "
                 f"exceed it): they are marked OVER MEMORY "
                 + ("and ranked with the others (--include-over-memory)." if include_over_memory else
                    "and are never called best (--include-over-memory ranks them too).")) if over else ""
    if eligible.is_empty():
        text = f"{frame.height} simulated points; none fits the GPU's memory." + over_text
    else:
        best = eligible.row(0, named=True)
        text = (
            f"{frame.height} simulated points. Fastest: {best['policy']} with a cache of {best['cache']} "
            f"({best['cache_capacity_experts']} experts): {best['tokens_per_s']:.1f} tokens/s, "
            f"{best['ratio_to_resident']:.2f}x the all-resident step latency and {best['ratio_to_oracle']:.2f}x the "
            f"perfect-prediction reference. The all-resident reference keeps every expert on the GPU (no copies); "
            f"the perfect-prediction reference prefetches the true experts and evicts by Belady's MIN, a strong "
            f"reference that online policies can beat, not a proven optimum (the simulator's summary also has a "
            f"proven lower bound)." + over_text
        )
    parts = groups(frame)
    if len(parts) > 1:
        # points of different models, precisions or runtimes are not comparable: rank each part apart
        text = (f"{frame.height} simulated points in {len(parts)} parts (a model's pricing, precision and runtime); "
                f"their speeds are not comparable across parts, so each table lists the fastest points of each part "
                f"in turn." + over_text)
        per_part = pl.concat([rank(p, include_over_memory=include_over_memory).head(5) for _, p in parts],
                             how="diagonal_relaxed")
        sections = [Section("Ranking", text, tables=[("the 5 fastest points of each part", _ranking_table(
            per_part, limit=per_part.height)), ("best point of each policy, per part", _best_per_policy(ranked))])]
    else:
        sections = [Section("Ranking", text, tables=[("fastest points", _ranking_table(ranked)),
                                                     ("best point of each policy", _best_per_policy(ranked))])]
    pareto = Section("Latency against GPU memory",
                     "Each line is one policy's Pareto front: the lowest latency it reaches within a memory budget. "
                     "Memory is the dense weights plus the expert cache at its peak; red crosses are points that do "
                     "not fit the GPU with the working margin.")
    flat = []
    for i, (name, part) in enumerate(groups(frame)):
        offloaded = part.filter(pl.col("buffering") != "resident")
        if offloaded.height >= 2 and spread(offloaded["mean_step_latency_s"].to_list()) < FLAT:
            flat.append(f"{name}: {flat_text(offloaded)}")
            continue
        pareto.figures.append(Figure(f"pareto-{i}", f"Pareto front: {name}", "mean decode step latency against peak "
                                     "GPU memory, per policy", plots.png(plots.plot_pareto(part, title=name))))
    if flat:
        pareto.text += " " + " ".join(flat)
    sections.append(pareto)
    if "tokens_per_s_low" in frame.columns and frame["tokens_per_s_low"].is_not_null().any():
        sections.append(_band_section(ranked))
    where = Section("Where the time goes", "Compute on the GPU, waiting for expert copies (stall), and host-side "
                    "dispatch beyond the GPU's own time, for the fastest points" + (" of each part." if len(groups(frame)) > 1 else "."))
    parts = groups(frame)
    for i, (name, part) in enumerate(parts):
        fid = "breakdown" if len(parts) == 1 else f"breakdown-{i}"
        where.figures.append(Figure(fid, f"latency breakdown: {name}" if len(parts) > 1 else "latency breakdown",
                                    "compute, stall and dispatch per forward pass of the fastest points",
                                    plots.png(plots.plot_latency_breakdown(
                                        part, top=8 if len(parts) > 1 else 12, include_over_memory=include_over_memory,
                                        title=name if len(parts) > 1 else ""))))
    sections.append(where)
    return sections


def trace_sections(trace_path: str | Path, results: pl.DataFrame | None = None, suffix: str = "") -> list[Section]:
    from pregate.analysis import plots
    from pregate.analysis.locality import lru_curve, lru_hit_rate_per_layer, request_frame, reuse_summary
    from pregate.analysis.routing import (expert_counts, expert_usage, lookahead_accuracy, transition_counts,
                                          transition_predictability)
    from pregate.traces import open_trace

    trace = open_trace(trace_path)
    name = trace.meta.model_id
    counts = expert_counts(trace)
    usage = expert_usage(trace)
    transitions = transition_counts(trace)
    accuracy = lookahead_accuracy(trace)
    batch = 1
    if results is not None and not results.is_empty():
        batch = int(results["batch_size"].mode().sort()[0])
    requests = request_frame(trace, batch_size=batch)
    n_objects = int(requests["n_objects"][0]) if requests.height else 0
    curve = lru_curve(requests)
    sizes = []
    if results is not None and not results.is_empty():
        sizes = sorted(set(results.filter(pl.col("buffering") == "cache")["cache_capacity_experts"].to_list()))
    if not sizes:
        sizes = sorted({max(1, int(n_objects * f)) for f in (0.1, 0.25, 0.5)})
    if len(sizes) > 4:
        sizes = [sizes[round(i * (len(sizes) - 1) / 3)] for i in range(4)]
    per_layer = lru_hit_rate_per_layer(requests, sizes)
    over_sizes = set()
    if results is not None and not results.is_empty():
        labelled = with_labels(results)
        over_sizes = set(labelled.filter(pl.col("over_memory") & (pl.col("buffering") == "cache"))
                         ["cache_capacity_experts"].to_list())
    sections = [
        Section(f"Routing of {name}", f"Trace {trace_path}: {requests.height} expert requests at batch {batch}, "
                f"{n_objects} experts in all.",
                tables=[("expert use per MoE layer (max/mean 1 and entropy 1 = perfectly even)", usage),
                        ("reuse per MoE layer (in requests; stack distance = distinct experts in between)",
                         reuse_summary(requests))],
                figures=[Figure("usage" + suffix, "expert usage", "share of each layer's tokens per expert",
                                plots.png(plots.plot_expert_usage(counts)))]),
        Section("Layer-to-layer transitions", "How well layer l's expert tells layer l+1's: the best a transition "
                "matrix learned on the whole trace can do, next to guessing the most frequent expert.",
                tables=[("transition predictability", transition_predictability(transitions))],
                figures=[Figure("transitions" + suffix, "transition heatmaps", "P(expert at l+1 | expert at l)",
                                plots.png(plots.plot_transitions(transitions)))]),
        Section("The pre-gating signal", "How often layer l's hidden state through layer l+j's router names the "
                "expert layer l+j chose.",
                tables=[("accuracy by lookahead distance", accuracy)] if not accuracy.is_empty() else [],
                figures=[Figure("lookahead" + suffix, "accuracy by lookahead distance", "ahead top-1 and recall against chance "
                                "and the most frequent expert", plots.png(plots.plot_lookahead_accuracy(accuracy)))]),
        Section("Caching", "LRU hit rate at every cache size from stack distances (no prefetch), with the simulated "
                "policies' hit rates; and per layer at the swept cache sizes.",
                figures=[Figure("lru-curve" + suffix, "hit rate by cache size", "LRU curve and simulated policies",
                                plots.png(plots.plot_lru_curve(curve, results))),
                         Figure("hit-rate-per-layer" + suffix, "hit rate per layer", "LRU hit rate of each MoE layer",
                                plots.png(plots.plot_hit_rate_per_layer(per_layer, n_objects, over_sizes)))]),
    ]
    return sections


def measured_section(pairs: pl.DataFrame) -> Section:
    from pregate.analysis import plots

    return Section("Simulated vs measured", "Step latency the simulator predicted against what the executor "
                   "measured on the GPU.",
                   figures=[Figure("sim-vs-measured", "simulated vs measured", "one point per setting",
                                   plots.png(plots.plot_sim_vs_measured(pairs)))])


def placement_points(part: pl.DataFrame) -> pl.DataFrame:
    """The best point per (placement, host, cache size) of one comparable part, points that fit only.

    A GPU expert cache does no CPU work, so its points hold on every host:
    they get host "" and the label of their family; each CPU placement keeps
    its host and is labelled by its buffering scheme.
    """
    from pregate.simulator.families import GPU_CACHE, placement_family

    part = part.filter(~pl.col("over_memory") & pl.col("tokens_per_s").is_not_null())
    fam = [placement_family(b) for b in part["buffering"].to_list()]
    host = part["host"].fill_null("") if "host" in part.columns else pl.Series([""] * part.height)
    part = part.with_columns(
        pl.Series("family", [f or "" for f in fam], dtype=pl.String),
        pl.Series("label", [GPU_CACHE if f == GPU_CACHE else b for f, b in zip(fam, part["buffering"].to_list())],
                  dtype=pl.String),
        pl.Series("host", [("" if f == GPU_CACHE else h) for f, h in zip(fam, host.to_list())], dtype=pl.String),
    ).filter(pl.col("family") != "")
    return (part.sort(["tokens_per_s", "key"], descending=[True, False])
            .unique(["label", "host", "cache_capacity_experts"], keep="first", maintain_order=True)
            .select("family", "label", "host", "cache_capacity_experts", "tokens_per_s", "policy"))


def placement_table(best: pl.DataFrame) -> pl.DataFrame | None:
    """Per cache size, per host: which placement is fastest, its tokens/s, and how much it leads the best of
    another family. None when the part has no CPU placement."""
    from pregate.simulator.families import SHORT

    hosts = sorted(h for h in best["host"].unique().to_list() if h)
    if not hosts:
        return None
    rows = []
    for cap in sorted(best["cache_capacity_experts"].unique().to_list()):
        at = best.filter(pl.col("cache_capacity_experts") == cap)
        row = {"experts on the GPU": cap}
        for host in hosts:
            here = at.filter(pl.col("host").is_in(["", host])).sort("tokens_per_s", descending=True)
            if here.is_empty():
                row[f"winner on {host}"] = "n/a"
                continue
            top = here.row(0, named=True)
            others = here.filter(pl.col("family") != top["family"])
            lead = f", {top['tokens_per_s'] / others['tokens_per_s'][0]:.2f}x the best {SHORT[others['family'][0]]}" \
                if not others.is_empty() and others["tokens_per_s"][0] else ""
            row[f"winner on {host}"] = f"{top['label']} ({SHORT[top['family']]}): {top['tokens_per_s']:.1f} tok/s{lead}"
        rows.append(row)
    return pl.DataFrame(rows)


def placement_sections(frame: pl.DataFrame, include_over_memory: bool = False) -> list[Section]:
    """Where each placement wins, by cache size and host kind: a table and a plot per comparable part."""
    from pregate.analysis import plots

    if "buffering" not in frame.columns:
        return []
    out = []
    for i, (name, part) in enumerate(groups(frame)):
        best = placement_points(part)
        table = placement_table(best) if not best.is_empty() else None
        if table is None:
            continue
        out.append(Section(
            f"Where each placement wins: {name}",
            "A GPU expert cache with prefetch copies missed experts in; a static CPU placement pins some experts "
            "on the GPU and computes the rest on the CPU where their weights live (static-layers: whole layers, "
            "llama.cpp's --n-cpu-moe; static-hot: the most used experts); a hybrid keeps a cache and computes a "
            "miss on the CPU when that is sooner (cpu-or-fetch) or always (cpu_compute). The GPU cache does no CPU "
            "work, so its numbers hold on every host; the placements are priced on each host kind (simulator "
            "README, host kinds table). Only points that fit the GPU's memory count.",
            tables=[("fastest placement per cache size and host", table)],
            figures=[Figure(f"placements-{i}", f"placements: {name}", "decode tokens/s against experts on the GPU: "
                            "the best GPU expert cache (black) and each CPU placement per host kind",
                            plots.png(plots.plot_placements(best, title=name)))]))
    return out


def build_sections(frame: pl.DataFrame, traces: list[str | Path] | None = None,
                   measured: pl.DataFrame | None = None,
                   include_over_memory: bool = False) -> tuple[list[Section], list[str]]:
    """All sections, and notes about what could not be shown."""
    notes = []
    sections = results_sections(frame, include_over_memory)
    sections += placement_sections(frame, include_over_memory)
    if traces is None:
        traces = list(dict.fromkeys(frame["trace"].to_list()))
    for i, path in enumerate(traces[:MAX_TRACES]):
        if not Path(path).exists():
            notes.append(f"trace {path} is not readable here, so its routing analysis is left out")
            continue
        part = frame.filter(pl.col("trace") == str(path)) if "trace" in frame.columns else frame
        sections += trace_sections(path, part if not part.is_empty() else frame, suffix=f"-{i}" if i else "")
    if len(traces) > MAX_TRACES:
        notes.append(f"routing analysis of {len(traces) - MAX_TRACES} more trace(s) left out")
    if measured is not None:
        sections.append(measured_section(measured))
    return sections, notes


# ---------------------------------------------------------------------------- writing

_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:2em}table{border-collapse:collapse;font-size:.85em;margin:.6em 0 1.2em}th,td{border:1px solid #ddd;
padding:.25em .55em;text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#555}
.note{color:#8a5a00}.answer{background:#f3f8ff;border-left:4px solid #4c72b0;padding:.3em 1em;margin:.8em 0}
.answer ul{margin:.2em 0 .4em}.over{color:#b00000;font-weight:600}pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em}"""


def _header(column: str) -> str:
    """Column names read as words in a table (``top1_accuracy`` -> ``top1 accuracy``)."""
    return column.replace("_", " ")


def _html_table(frame: pl.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(_header(c))}</th>" for c in frame.columns)

    def cell(v) -> str:
        text = html.escape(_fmt(v))
        return f"<td class=\"over\">{text}</td>" if v == "OVER MEMORY" else f"<td>{text}</td>"

    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in frame.iter_rows())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(frame: pl.DataFrame) -> str:
    lines = ["| " + " | ".join(_header(c) for c in frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for row in frame.iter_rows():
        lines.append("| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


def render_html(title: str, intro: str, sections: list[Section], notes: list[str]) -> str:
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
             + (f"<p>{html.escape(intro)}</p>" if intro else "")]
    for note in notes:
        parts.append(f"<p class=\"note\">{html.escape(note)}</p>")
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.text:
            parts.append(f"<p>{html.escape(s.text)}</p>")
        for block in s.answers:
            items = "".join(f"<li>{html.escape(line.strip())}</li>" for line in block[1:])
            parts.append(f"<div class=\"answer\"><p><b>{html.escape(block[0])}</b></p><ul>{items}</ul></div>")
        for caption, table in s.tables:
            parts.append(f"<h3>{html.escape(caption)}</h3>{_html_table(table)}")
        for f in s.figures:
            data = base64.b64encode(f.png).decode("ascii")
            parts.append(f"<figure id=\"{html.escape(f.id)}\"><img src=\"data:image/png;base64,{data}\" "
                         f"alt=\"{html.escape(f.title)}\"><figcaption>{html.escape(f.title)}: "
                         f"{html.escape(f.caption)}</figcaption></figure>")
    parts.append("</body></html>\n")
    return "".join(parts)


def render_markdown(title: str, intro: str, sections: list[Section], notes: list[str], ranking_text: str) -> str:
    lines = [f"# {title}", "", intro, ""]
    lines += [f"> {n}" for n in notes]
    lines += ["", "```", ranking_text, "```", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        if s.text:
            lines += [s.text, ""]
        for block in s.answers:
            lines += [f"**{block[0]}**", ""] + [f"- {line.strip()}" for line in block[1:]] + [""]
        for caption, table in s.tables:
            lines += [f"**{caption}**", "", _md_table(table), ""]
        for f in s.figures:
            lines += [f"![{f.title}](figures/{f.id}.png)", "", f"*{f.title}: {f.caption}*", ""]
    return "\n".join(lines)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def write_report(results, out: str | Path, *, traces: list[str | Path] | None = None,
                 measured: pl.DataFrame | None = None, title: str = "pregate sweep report",
                 lead: list[Section] | None = None, include_over_memory: bool = False,
                 uncertainty: bool = False) -> ReportFiles:
    """Write ``report.html`` (self-contained), ``report.md`` and ``figures/*.png`` into ``out``.

    ``results`` is a results folder (from a sweep) or its frame; ``traces``
    overrides the traces whose routing is analysed (default: the results' own,
    when they are readable); ``measured`` holds measured/simulated latency pairs;
    ``lead`` sections come first (the demo's answer); over-memory points are
    never "best" unless ``include_over_memory``.
    """
    from pregate.simulator.sweep import read_results

    frame = results if isinstance(results, pl.DataFrame) else read_results(results)
    if frame.is_empty():
        from pregate.simulator.sweep import SweepError

        raise SweepError("no points to report")
    if uncertainty and ("tokens_per_s_low" not in frame.columns or frame["tokens_per_s_low"].is_null().all()):
        from pregate.simulator.sweep import SweepError

        raise SweepError("these results have no bands: run 'pregate sweep ... --uncertainty corners' first")
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    sections, notes = build_sections(frame, traces, measured, include_over_memory)
    if lead:
        sections = list(lead) + [Section("What was simulated", "")] + sections
    models = "; ".join(dict.fromkeys(with_labels(frame)["pricing"].to_list()))
    profiles = ", ".join(dict.fromkeys(frame["profile"].to_list()))
    intro = (f"{frame.height} points of {models} on {profiles}: speculation "
             f"{', '.join(sorted(set(frame['speculation'])))}; caching {', '.join(sorted(set(frame['cache_policy'])))}; "
             f"cache sizes {', '.join(sorted(set(frame['cache'])))}; compression "
             f"{', '.join(sorted(set(frame['compression'])))}; batch sizes "
             f"{', '.join(str(b) for b in sorted(set(frame['batch_size'])))}.")
    if lead:
        sections[len(lead)].text, intro = intro, ""
    ids = []
    for s in sections:
        for f in s.figures:
            _atomic_write(out / "figures" / f"{f.id}.png", f.png)
            ids.append(f.id)
    html_path, md_path = out / "report.html", out / "report.md"
    _atomic_write(html_path, render_html(title, intro, sections, notes).encode("utf-8"))
    ranking = format_ranking(rank(frame, include_over_memory=include_over_memory), limit=15)
    _atomic_write(md_path, render_markdown(title, intro, sections, notes, ranking).encode("utf-8"))
    return ReportFiles(html=html_path, markdown=md_path, figures=ids)
