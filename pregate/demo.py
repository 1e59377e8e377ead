"""``pregate demo``: the main job on built-in data, as a first run on a new machine.

It answers "what should I run on an RTX 3090, and how close is that to the
best possible?" for two real model sizes, from routing recorded on held-out
text by pregate's own trained small models:

* the Switch-topology sample (6 MoE layers x 8 experts, top-1) priced as
  switch-base-8, with bf16 and with fp32 experts;
* the Mixtral-topology sample (32 MoE layers x 8 experts, top-2) priced as
  mixtral-8x7b, with bf16 host copies and with int4 host copies;
* the same Mixtral bf16 part with the experts that are not on the GPU computed
  on the CPU (static-layers: llama.cpp's --n-cpu-moe; static-hot: the most used
  experts pinned; cpu-or-fetch: a cache whose misses run on the CPU when that is
  sooner), on a dual-channel DDR4 desktop and an eight-channel server host, with
  pregate's eager runtime; the report tables where each placement wins by cache
  size and host kind.

For each part it sweeps speculation x caching x cache sizes that fit a 24 GB
card (dense weights + cache + working margin), prints a few lines (which
policy and cache to run, how far that is from the all-resident and the
perfect-prediction reference, what the worst choice in the grid would cost) under two
runtimes (pregate-eager: pregate's own executor; gpu-bound: no host cost), the fastest
points, and writes a report (one self-contained HTML page that leads with
the same answer, and a Markdown summary). A rerun reuses the finished points.

examples:
  pregate demo                      # writes ./pregate-demo/
  pregate demo -o out --workers 2
  pregate demo --trace runs/mx --price-as mixtral-8x7b     # the same job on your own trace
"""

from __future__ import annotations

from dataclasses import dataclass

HELP = "run the main job on built-in data: what to run on an RTX 3090 for Switch and Mixtral sizes, with a report"
DESCRIPTION = __doc__

# on-demand loading against Pre-gated MoE's next-layer prefetch: the comparison the demo teaches
# (every other policy is one 'pregate sweep' away; a third one here would push the demo past 90 s)
SPECULATION = ["none", "layer_minus_1"]
CACHING = ["lru", "least-stale"]
# pregate's own eager executor (host issue costs measured on an H200), and a runtime with no host cost
# (what CUDA graphs or fused kernels approach): the same question under both
RUNTIMES = ["pregate-eager", "gpu-bound"]
PROFILE = "rtx3090"
# the placements that run experts on the CPU, on two host kinds (one runtime: the demo must stay short)
PLACEMENT_HOSTS = ["ddr4-3200-2ch", "server-ddr5-8ch"]
PLACEMENT_RUNTIME = "pregate-eager"
STATIC_PLACEMENTS = ["static-layers", "static-hot"]  # pin their experts: speculation and caching do nothing
HYBRID_PLACEMENTS = ["cpu-or-fetch"]  # a cache: prefetched with Pre-gated MoE's next-layer rule
MIN_SPREAD = 1.5  # best and worst of a part should differ at least this much, or the demo says why not
SWITCH_SAMPLE = "pregate-moe-tiny"
MIXTRAL_SAMPLE = "pregate-moe-mixtral-topo"


@dataclass
class Part:
    """One question the demo answers: a trace, the model it is priced as, the expert precision."""

    title: str
    trace: str
    price_as: str
    dtype: str = ""
    compression: str = "none"
    synthetic: bool = False
    cache_sizes: tuple[str, ...] = ()
    expert_bytes: int = 0
    dense_bytes: int = 0
    total_experts: int = 0
    all_fit: bool = False
    host: str = ""  # a host kind: this part runs the CPU placements on it
    runtimes: tuple[str, ...] = tuple(RUNTIMES)

    def grids(self, speculation: list[str]) -> list[dict]:
        common = {"profile": [PROFILE], "runtime": list(self.runtimes), "cache": list(self.cache_sizes),
                  "price_as": [self.price_as], "dtype": [self.dtype], "compression": [self.compression]}
        if not self.host:
            return [{**common, "speculation": speculation, "cache_policy": CACHING}]
        return [{**common, "host": [self.host], "buffering": STATIC_PLACEMENTS, "speculation": ["none"],
                 "cache_policy": ["lru"]},
                {**common, "host": [self.host], "buffering": HYBRID_PLACEMENTS,
                 "speculation": [s for s in speculation if s != "none"][:1] or ["none"], "cache_policy": ["lru"]}]

    def matches(self, row: dict, runtime: str) -> bool:
        return (row["price_as"] == self.price_as and row["dtype"] == self.dtype and row["runtime"] == runtime
                and row["compression"] == self.compression and row["trace"] == self.trace
                and (row.get("host") or "") == self.host)


def add_arguments(parser) -> None:
    from pregate.simulator.pricing import MODEL_CONFIG_HELP

    parser.add_argument("-o", "--out", default="pregate-demo", help="output folder (default: ./pregate-demo)")
    parser.add_argument("--trace", help="trace folder to use instead of the shipped samples (one part)")
    parser.add_argument("--price-as", metavar="MODEL", default="",
                        help="with --trace: price its routing as this known model (default: its own sizes)")
    parser.add_argument("--model-config", metavar="FILE", help="with --trace: " + MODEL_CONFIG_HELP)
    parser.add_argument("--include-over-memory", action="store_true",
                        help="let points that do not fit the GPU's memory be called best")
    parser.add_argument("--workers", type=int, help="local worker processes (default: all cores)")
    parser.add_argument("--top", type=int, default=5, help="fastest points to print per part (default: 5)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _sample_or_synthetic(name: str, out, layers: int, top_k: int) -> tuple[str, bool]:
    """A shipped sample; if this install lacks it, say so in one line and use a synthetic trace of its shape."""
    import sys

    from pregate.simulator.sweep import SweepError, sample_trace, sample_trace_path

    try:
        return str(sample_trace(name)), False
    except SweepError:
        from pregate.simulator.synthetic import make_trace

        print(f"note: the shipped sample trace is missing ({sample_trace_path(name)}); using a SYNTHETIC trace of "
              f"its shape ({layers} MoE layers x 8 experts, top-{top_k}) instead", file=sys.stderr)
        folder = out / f"synthetic-{name}"
        if not folder.is_dir():
            make_trace(folder, seqs=8, prompt_len=8, new_tokens=16, layers=layers, experts=8, top_k=top_k)
        return str(folder), True


def default_parts(out) -> list[Part]:
    switch, s_syn = _sample_or_synthetic(SWITCH_SAMPLE, out, layers=6, top_k=1)
    mixtral, m_syn = _sample_or_synthetic(MIXTRAL_SAMPLE, out, layers=32, top_k=2)
    return [
        Part("switch-base-8, bf16 experts", switch, "switch-base-8", "bfloat16", synthetic=s_syn),
        Part("switch-base-8, fp32 experts", switch, "switch-base-8", "float32", synthetic=s_syn),
        Part("mixtral-8x7b, bf16 host copies", mixtral, "mixtral-8x7b", "bfloat16", synthetic=m_syn),
        Part("mixtral-8x7b, int4 host copies (dequantised to bf16 on the GPU)", mixtral, "mixtral-8x7b", "bfloat16",
             compression="int4", synthetic=m_syn),
        *(Part(f"mixtral-8x7b, bf16: CPU placements on a {host} host", mixtral, "mixtral-8x7b", "bfloat16",
               synthetic=m_syn, host=host, runtimes=(PLACEMENT_RUNTIME,)) for host in PLACEMENT_HOSTS),
    ]


def size_caches(part: Part, profile) -> None:
    """Cache sizes that fit the GPU: the largest that fits (at most half the experts), its half and its quarter."""
    from pregate.simulator.api import Simulation
    from pregate.simulator.memory_fit import working_margin
    from pregate.simulator.settings import Settings

    sim = Simulation(part.trace, Settings(profile=PROFILE, price_as=part.price_as, dtype=part.dtype), profile=profile)
    memory = float(profile["gpu.memory"])
    part.expert_bytes, part.dense_bytes = sim.expert_bytes, sim.costs.dense_bytes
    part.total_experts = sim.stream.layout.n_objects
    room = memory - working_margin(memory) - part.dense_bytes
    fits = int(max(0.0, room) // part.expert_bytes)
    part.all_fit = fits >= part.total_experts
    # one slot stays free for a bypass copy when every cached expert is in use
    largest = min(part.total_experts // 2, max(1, fits - 1))
    part.cache_sizes = tuple(str(n) for n in sorted({max(1, largest // 4), max(1, largest // 2), largest}))


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n < 10e9 else f"{n / 1e9:.1f} GB"


def answer(part: Part, by_runtime: dict, include_over_memory: bool = False) -> list[str]:
    """The few lines a newcomer reads: what to run, how far from the bounds, what the worst choice costs.

    ``by_runtime`` maps each runtime to the part's ranked points under it.
    """
    from pregate.simulator.ranking import fitting

    first = next(iter(by_runtime.values()))
    lines = [f"{part.title}: {first['pricing'][0]}, on {PROFILE}" + (" (SYNTHETIC routing)" if part.synthetic else "")]
    need = _gb(part.dense_bytes + part.total_experts * part.expert_bytes)
    lines.append(f"  all {part.total_experts} experts fit in {need}: with that memory free, keep them all resident; "
                 f"the lines below are for a smaller share of the GPU" if part.all_fit else
                 f"  all-resident would need {need}, more than this GPU has: offload")
    for runtime, ranked in by_runtime.items():
        eligible = fitting(ranked, include_over_memory)
        if eligible.is_empty():
            lines.append(f"  {runtime} runtime: no setting fits the GPU's memory")
            continue
        best, worst = eligible.row(0, named=True), eligible.row(-1, named=True)
        n = best["cache_capacity_experts"]
        factor = best["tokens_per_s"] / worst["tokens_per_s"] if worst["tokens_per_s"] else float("inf")
        if part.host:  # placements: the GPU-cache references do not bound them
            lines.append(
                f"  {runtime} runtime: run {best['policy']} with {n} of {part.total_experts} experts on the GPU "
                f"({_gb(n * part.expert_bytes)}), the rest computed on the CPU: {best['tokens_per_s']:.1f} tokens/s; "
                f"slowest placement here, {worst['policy']} with {worst['cache_capacity_experts']}: "
                f"{worst['tokens_per_s']:.1f} tokens/s ({factor:.2f}x slower); the GPU-cache references (all-resident "
                f"{best['bound_resident_tokens_per_s']:.1f}, perfect prediction {best['bound_oracle_tokens_per_s']:.1f} "
                "tokens/s) do not bound a placement that computes on the CPU")
            continue
        lines.append(
            f"  {runtime} runtime: run {best['policy']} with {n} of {part.total_experts} experts cached "
            f"({_gb(n * part.expert_bytes)}): {best['tokens_per_s']:.1f} tokens/s, {best['ratio_to_resident']:.2f}x "
            f"the all-resident step latency ({best['bound_resident_tokens_per_s']:.1f} tokens/s) and "
            f"{best['ratio_to_oracle']:.2f}x the perfect-prediction reference ({best['bound_oracle_tokens_per_s']:.1f}); worst "
            f"choice here, {worst['policy']} with {worst['cache_capacity_experts']}: {worst['tokens_per_s']:.1f} "
            f"tokens/s, {factor:.2f}x slower")
        if factor < MIN_SPREAD:
            lines.append(f"    best and worst differ by less than {MIN_SPREAD}x because even the worst point waits for "
                         f"copies only {worst['stall_share']:.0%} of its time: at this size a copy of one expert "
                         f"({part.expert_bytes / 1e6:.1f} MB) is cheap next to the compute and dispatch of a step")
    return lines


def placement_answer(frame) -> list[str]:
    """Where each placement wins, by cache size and host kind, as answer lines (empty without placements)."""
    from pregate.analysis.report import groups, placement_points, placement_table

    lines = []
    for name, part in groups(frame):
        best = placement_points(part)
        table = placement_table(best) if not best.is_empty() else None
        if table is None:
            continue
        lines.append(f"Where each placement wins ({name}): GPU expert cache vs experts computed on the CPU")
        for row in table.iter_rows(named=True):
            cells = "; ".join(f"{k[len('winner on '):]}: {v}" for k, v in row.items() if k.startswith("winner on "))
            lines.append(f"  {row['experts on the GPU']} experts on the GPU: {cells}")
    return lines


def _lead_section(parts, answers, runtime_note: str):
    from pregate.analysis.report import Section

    items = []
    for lines in answers:
        items.append(lines)
    text = ("What to run on an RTX 3090 (24 GiB), from routing recorded by pregate's own trained small models on "
            "held-out text, priced at real model sizes. " + runtime_note)
    return Section("The answer", text, answers=items)


def run(args) -> int:
    import time
    from pathlib import Path

    import polars as pl

    from pregate.simulator.ranking import format_ranking, rank
    from pregate.analysis.report import write_report
    from pregate.simulator.pricing import spec_from_flags
    from pregate.simulator.profile import load_profile
    from pregate.simulator.sweep import Plan, SweepSpec, plan_sweep, read_results, run_sweep
    from pregate.traces import open_trace

    start = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    profile = load_profile(PROFILE)
    if args.trace:
        price = spec_from_flags(args.price_as, args.model_config)
        parts = [Part(f"{Path(args.trace).name}" + (f" priced as {price}" if price else ""), str(args.trace), price)]
    else:
        if args.price_as or args.model_config:
            from pregate.simulator.sweep import SweepError

            raise SweepError("--price-as and --model-config go with --trace (the built-in parts are priced already)")
        parts = default_parts(out)
    plans = []
    for part in parts:
        size_caches(part, profile)
        meta = open_trace(part.trace).meta
        speculation = SPECULATION if meta.ahead_distance else ["none", "transition"]
        for grid in part.grids(speculation):
            plans.append(plan_sweep(SweepSpec(traces=[part.trace], grid=grid, source="pregate demo")))
    plan = Plan(spec=plans[0].spec, points=[p for pl_ in plans for p in pl_.points],
                profiles={k: v for pl_ in plans for k, v in pl_.profiles.items()},
                trace_files={k: v for pl_ in plans for k, v in pl_.trace_files.items()})
    runtime_note = ("Runtimes: pregate-eager is pregate's own executor (host issue costs derived from its H200 "
                    "record); gpu-bound has no host cost (what CUDA graphs or fused kernels approach). The "
                    "perfect-prediction reference is oracle prefetch with Belady eviction at the same cache size.")
    print(f"pregate demo: {len(plan.points)} settings in {len(parts)} parts on the {PROFILE} profile "
          f"({profile['gpu.memory'] / 2**30:.0f} GiB); cache sizes that fit with dense weights and a working margin")
    results = out / "results"
    outcome = run_sweep(plan, results, workers=args.workers, progress=not args.quiet)
    print(f"  {outcome.ran} points simulated in {outcome.seconds:.1f} s"
          + (f", {outcome.skipped} reused from {results}" if outcome.skipped else ""))
    keys = [p.key for p in plan.points]
    frame = read_results(results).filter(pl.col("key").is_in(keys))
    answers, tables = [], []
    rows = frame.select("price_as", "dtype", "compression", "trace", "runtime", "host").to_dicts()
    for part in parts:
        by_runtime = {}
        for runtime in part.runtimes:
            mask = pl.Series([part.matches(r, runtime) for r in rows])
            by_runtime[runtime] = rank(frame.filter(mask), include_over_memory=args.include_over_memory)
            tables.append((f"{part.title}, {runtime} runtime", by_runtime[runtime]))
        answers.append(answer(part, by_runtime, args.include_over_memory))
    wins = placement_answer(frame)
    if wins:
        answers.append(wins)
    print("\nThe answer:")
    for lines in answers:
        print("\n".join(lines))
    print(f"  ({runtime_note})")
    for title, ranked in tables:
        print(f"\nfastest points: {title}")
        print(format_ranking(ranked, limit=args.top))
    title = f"pregate demo: what to run on an {PROFILE}"
    lead = [_lead_section(parts, answers, runtime_note)]
    report = write_report(frame, out, title=title, lead=lead, include_over_memory=args.include_over_memory)
    print(f"\nreport: {report.html} (self-contained, {len(report.figures)} plots) and {report.markdown}")
    print(f"points: {results}/ (pregate.simulator.sweep.read_results); done in {time.monotonic() - start:.1f} s")
    return 0
