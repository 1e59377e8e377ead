"""``pregate simulate``: replay a trace against a hardware profile and policies."""

from pregate.simulator.policies.listing import policy_listing
from pregate.simulator.settings import add_settings_arguments, settings_from_args

HELP = "simulate offloaded MoE inference on a trace: latency, hits/misses, bounds"
DESCRIPTION = """Replay a routing trace in a discrete-event simulation of one GPU with its
host: a GPU expert cache, copies over PCIe, speculation (prefetching) and
caching policies. Prints a summary (--json alone: the summary as JSON instead;
--json FILE: also written to FILE); every result carries two references (all
experts resident; perfect prediction: oracle speculation with Belady eviction,
which online policies can beat) and a proven lower bound that no policy beats,
with its ratio to each.

examples:
  pregate simulate runs/sb8 --cache 25%
  pregate simulate runs/sb8 --profile t4 --speculation layer_minus_1 --cache-policy lfu --cache 2GB
  pregate simulate runs/mx --batch-size 8 --cache 96 --per-layer --compression int8 --json out.json
  pregate simulate runs/sb8 --profile my-gpu.toml --steps-out steps.parquet --timeline tl.json
  pregate simulate runs/sb8 --profile rtx3090 --runtime gpu-bound --uncertainty corners
  pregate simulate runs/mx --buffering cpu_compute --host ddr4-3200-2ch   # misses on a DDR4 desktop's CPU
  pregate simulate runs/sb8 --uncertainty 32 --seed 1        # 32 seeded samples of the ranges
  pregate simulate runs/sb8 --replay-only --cache-policy belady      # counts only, fast
  pregate simulate runs/mx --speculation transition --cache-policy next-use --prefetch-gate off
  pregate simulate runs/mx --cache-policy s3fifo --reset-cache-per-sequence
  pregate simulate runs/sb8 --cache 25% --json | jq .decode_stall_share
  pregate simulate runs/sb8 --cache 25% --phase all                   # headline over prefill and decode
  pregate simulate sample:pregate-moe-tiny --price-as switch-base-8 --dtype bfloat16   # routing of the sample,
                                                                    # sizes of switch-base-8
  pregate simulate runs/mx --model-config my-moe.toml                # sizes from a config file
  pregate simulate runs/mx --speculation multi_layer --policy-arg decay=0.3 --cache-policy lfu-decay \\
      --policy-arg lfu-decay.half_life=48                           # policy parameters

""" + policy_listing()


def add_arguments(p) -> None:
    p.add_argument("trace", help="trace folder (from 'pregate trace') or one Parquet part")
    add_settings_arguments(p)
    from pregate.traces.cliargs import add_json, add_quiet
    from pregate.simulator.pricing import MODEL_CONFIG_HELP

    p.add_argument("--model-config", metavar="FILE", help=MODEL_CONFIG_HELP)
    add_json(p, "the summary and settings")
    p.add_argument("--steps-out", metavar="FILE.parquet", help="write per-step latency and its breakdown")
    p.add_argument("--timeline", metavar="FILE.json", help="write a Chrome/Perfetto trace of the simulated streams")
    p.add_argument("--no-bounds", action="store_true", help="skip the two bound runs (faster)")
    p.add_argument("--replay-only", action="store_true", help="counts only (fast replay), no timing")
    p.add_argument("--phase", choices=("decode", "all"), default="decode",
                   help="what the latency headline and the bound ratios cover: decode steps (default; what a user "
                        "waits for per token) or all passes, prefill included; counts are shown per phase either way")
    add_quiet(p)


def _phase_line(s: dict, phase: str) -> str:
    issued = s[f"{phase}_bytes_issued"]
    # None: a step's misses mix copied and CPU-run ones (cpu_compute, cpu-or-fetch); "moved" below is exact
    issued = "n/a (see moved)" if issued is None else f"{issued / 1e6:.1f} MB"
    return (f"  {phase + ':':9}{s[f'{phase}_passes']} passes, {s[f'{phase}_requests']} requests: "
            f"hits {s[f'{phase}_hits']}  late hits {s[f'{phase}_late_hits']}  misses {s[f'{phase}_misses']}  "
            f"prefetches {s[f'{phase}_prefetches']}  copies issued {issued}  "
            f"stall {s[f'{phase}_stall_s'] * 1e3:.3f} ms ({s[f'{phase}_stall_share']:.1%} of the phase)")


def format_summary(s: dict, phase: str = "decode") -> str:
    """The headline is decode (what a user waits for per token) unless ``phase == "all"``; prefill apart."""
    def ms(x):
        return "n/a" if x is None else f"{x * 1e3:.3f} ms"

    lines = [
        f"{s['pricing']}, on {s['profile']} with host {s.get('host', '')} ({s.get('runtime', '')} runtime, "
        f"{s['gpu_dtype']}): {s['steps']} decode "
        f"steps, {s['tokens']} tokens, "
        f"{s['requests']} expert requests, cache {s['cache_capacity_experts']} experts",
    ]
    if s.get("placement_note"):
        lines.append(f"  placement: {s['placement_note']}")
    if "decode_passes" in s:
        lines += [_phase_line(s, "decode"), _phase_line(s, "prefill")]
    lines.append(f"  all passes: hits {s['hits']}  late hits {s['late_hits']}  misses {s['misses']}  "
                 f"prefetches {s['prefetches']} (wasted {s['wasted_prefetches']})  moved {s['bytes_moved'] / 1e6:.1f} MB"
                 f"  stall share {s['stall_share']:.1%}")
    if phase == "all":
        passes = s["steps"] + s["prefill_passes"]
        lines.append(f"  all {passes} passes: {ms(s['total_s'])} in all, mean {ms(s['total_s'] / max(passes, 1))} "
                     f"per pass, stall share {s['stall_share']:.1%}")
        if "bound_resident_total_s" in s:
            lines.append(f"  references (all passes, total time): all-resident {ms(s['bound_resident_total_s'])} "
                         f"(x{s['ratio_to_resident_all']:.3f}), perfect prediction (oracle+belady) "
                         f"{ms(s['bound_oracle_total_s'])} (x{s['ratio_to_oracle_all']:.3f})")
    else:
        stall = s.get("decode_stall_share", s["stall_share"])
        lines.append(f"  decode step latency mean {ms(s['mean_step_latency_s'])}  p50 {ms(s['p50_step_latency_s'])}  "
                     f"p95 {ms(s['p95_step_latency_s'])}  tokens/s {s['tokens_per_s'] or 0:.1f}  "
                     f"stall share {stall:.1%}")
        if "bound_resident_mean_step_latency_s" in s:
            lines.append(
                f"  references (decode): all-resident {ms(s['bound_resident_mean_step_latency_s'])} "
                f"(x{s['ratio_to_resident']:.3f}), perfect prediction (oracle+belady) "
                f"{ms(s['bound_oracle_mean_step_latency_s'])} (x{s['ratio_to_oracle']:.3f})")
            if s.get("bound_lower_mean_step_latency_s"):
                lines.append(f"  lower bound (no policy can beat it) {ms(s['bound_lower_mean_step_latency_s'])} "
                             f"(x{s['ratio_to_lower_bound']:.3f})")
    if s.get("uncertainty"):
        lines.append(
            f"  uncertainty ({s['uncertainty']}, {s['uncertainty_values']} values with a range): tokens/s "
            f"{s['tokens_per_s_low']:.1f} to {s['tokens_per_s_high']:.1f}, step latency "
            f"{ms(s['mean_step_latency_s_low'])} to {ms(s['mean_step_latency_s_high'])}")
    lines.append(f"  peak GPU memory {_bytes(s['peak_gpu_bytes'])} (dense weights + expert cache)"
                 + ("" if not s.get("over_memory") else
                    f" OVER MEMORY: with the {_bytes(s['working_margin_bytes'])} working margin it exceeds the GPU's "
                    f"{_bytes(s['gpu_memory_bytes'])}"))
    return "\n".join(lines)


def run(args) -> int:
    import json

    from pregate.traces.cliargs import emit_json, json_to_stdout
    from pregate.simulator.api import Simulation, add_total_bounds, resolve_policies
    from pregate.simulator.profile import detect_profile
    from pregate.traces import validate_trace

    from pregate.simulator.pricing import spec_from_flags
    from pregate.simulator.sweep import resolve_trace

    settings = settings_from_args(args)
    settings = settings.replace(price_as=spec_from_flags(settings.price_as, args.model_config))
    if settings.profile == "auto":
        settings = settings.replace(profile=detect_profile())
    resolve_policies(settings)  # a typo fails before the trace is read
    trace = validate_trace(resolve_trace(args.trace))
    sim = Simulation(trace, settings)
    if args.replay_only:
        counts = sim.replay().as_dict()
        text = json.dumps({**counts, "settings": settings.to_dict()}, indent=2, sort_keys=True)
        print(text)  # the counts are JSON already; --json FILE also writes them
        if args.json and not json_to_stdout(args):
            emit_json(args, text)
        return 0
    result = sim.run(timeline=bool(args.timeline), bounds=not args.no_bounds)
    if args.phase == "all" and not args.no_bounds:
        add_total_bounds(sim, settings, result.summary)
    if not json_to_stdout(args):
        print(format_summary(result.summary, args.phase))
    emit_json(args, result.to_json())
    if args.steps_out:
        result.write_steps(args.steps_out)
    if args.timeline:
        result.write_timeline(args.timeline)
    return 0


def _bytes(n: float) -> str:
    """Bytes in the largest unit that keeps a digit before the point."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"
