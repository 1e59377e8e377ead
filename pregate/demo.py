"""``pregate demo``: the main job on built-in data, as a first run on a new machine.

It sweeps speculation x caching policies x cache sizes over the shipped sample
trace (routing recorded from pregate's own trained small MoE) on the RTX 3090
profile, prints the settings ranked by tokens/s with their distance to both
bounds, and writes a report (one self-contained HTML page and a Markdown
summary). A rerun reuses the finished points.

examples:
  pregate demo                      # writes ./pregate-demo/
  pregate demo -o out --workers 2
  pregate demo --trace runs/sb8     # the same job on your own trace
"""

HELP = "run the main job on built-in data: a policy sweep over the shipped sample trace, ranked, with a report"
DESCRIPTION = __doc__

SPECULATION = ["none", "layer_minus_1", "multi_layer", "adaptive", "transition", "eam"]
CACHING = ["lru", "lfu", "least-stale", "pinned-hot"]
CACHE_SIZES = ["10%", "25%", "50%"]
PROFILE = "rtx3090"


def add_arguments(parser) -> None:
    parser.add_argument("-o", "--out", default="pregate-demo", help="output folder (default: ./pregate-demo)")
    parser.add_argument("--trace", help="trace folder to use instead of the shipped sample")
    parser.add_argument("--workers", type=int, help="local worker processes (default: all cores)")
    parser.add_argument("--top", type=int, default=15, help="rows of the ranked table to print (default: 15)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _trace(args, out):
    """The sample trace; if this install lacks it, say so in one line and use a synthetic one."""
    import sys
    from pathlib import Path

    from pregate.simulator.sweep import SweepError, sample_trace, sample_trace_path

    if args.trace:
        return Path(args.trace), False
    try:
        return sample_trace(), False
    except SweepError:
        from pregate.simulator.synthetic import make_trace

        print(f"note: the shipped sample trace is missing ({sample_trace_path()}); using a SYNTHETIC trace instead",
              file=sys.stderr)
        return make_trace(out / "synthetic-trace", seqs=8, prompt_len=8, new_tokens=16, layers=6, experts=8), True


def run(args) -> int:
    import time
    from pathlib import Path

    import polars as pl

    from pregate.analysis.ranking import format_ranking, rank
    from pregate.analysis.report import write_report
    from pregate.simulator.sweep import SweepSpec, plan_sweep, read_results, run_sweep
    from pregate.traces import open_trace

    start = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trace, synthetic = _trace(args, out)
    meta = open_trace(trace).meta
    spec = SweepSpec(
        traces=[str(trace)],
        grid={"profile": [PROFILE], "speculation": SPECULATION if meta.ahead_distance else ["none", "transition", "eam"],
              "cache_policy": CACHING, "cache": CACHE_SIZES},
        source="pregate demo",
    )
    plan = plan_sweep(spec)
    stacks = ", ".join(f"{n}: {s.moe_layers} MoE layers x {s.experts} experts, top-{s.top_k}" for n, s in meta.stacks.items())
    print(f"pregate demo: {len(plan.points)} settings of {meta.model_id} ({stacks}; "
          f"{meta.expert_bytes() / 1e6:.2f} MB per expert) on the {PROFILE} profile")
    print(f"  trace {trace}{' (synthetic routing)' if synthetic else ''}")
    results = out / "results"
    outcome = run_sweep(plan, results, workers=args.workers, progress=not args.quiet)
    print(f"  {outcome.ran} points simulated in {outcome.seconds:.1f} s"
          + (f", {outcome.skipped} reused from {results}" if outcome.skipped else ""))
    keys = [p.key for p in plan.points]
    frame = read_results(results).filter(pl.col("key").is_in(keys))
    ranked = rank(frame)
    print()
    print(format_ranking(ranked, limit=args.top))
    best, worst = ranked.row(0, named=True), ranked.row(-1, named=True)
    print(f"\nbest: {best['policy']} with {best['cache']} of the experts cached: {best['tokens_per_s']:.1f} tokens/s, "
          f"{best['ratio_to_resident']:.3f}x the all-resident step latency, {best['ratio_to_oracle']:.3f}x the oracle"
          f" bound; slowest: {worst['policy']} at {worst['cache']}: {worst['tokens_per_s']:.1f} tokens/s")
    if best["ratio_to_resident"] and best["ratio_to_resident"] < 1.1 and meta.expert_bytes() < 5e6:
        print("  this model's experts are small, so on this GPU copies cost little and the host's kernel dispatch "
              "dominates;\n  for a model whose experts do not fit, try: pregate recommend --model mixtral-8x7b --gpu rtx3090")
    report = write_report(frame, out, title=f"pregate demo: {meta.model_id} on {PROFILE}")
    print(f"\nreport: {report.html} (self-contained, {len(report.figures)} plots) and {report.markdown}")
    print(f"points: {results}/ (pregate.simulator.sweep.read_results); done in {time.monotonic() - start:.1f} s")
    return 0
