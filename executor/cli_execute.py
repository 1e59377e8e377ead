"""``pregate execute``: offloaded inference for real, with the simulator's policies."""

HELP = "run a model (or a trace's synthetic model) with experts offloaded to host memory; measure it"
DESCRIPTION = """Run Mixture-of-Experts inference with every expert in host memory (pinned on
CUDA) and a device cache of expert slots, driven by the simulator's own
speculation and caching policies. With --model, a Hugging Face Switch /
Mixtral / Qwen-MoE / OLMoE model or pregate's small MoE generates greedily;
with --trace, a synthetic model of the trace's shapes replays its routing
(any trace, including imported ones). Prints a summary with the simulator's
keys (hits, late_hits, misses, bytes_moved, step latencies, tokens_per_s,
stall_share); --json prints it as JSON (--json FILE writes it), with the
generated token ids for a model.

--compare checks the result: for a model, against the all-resident model in
full precision (identical tokens; with --compression int8/int4 the logits'
relative error and token agreement); for a trace, against the simulator.

examples:
  pregate execute --model google/switch-base-8 --random-init --device cpu --speculation layer_minus_1 \\
      --cache-policy lru --cache 25% --max-new-tokens 16
  pregate execute --model runs/tiny-moe --device cuda --cache 50% --compression int8 --compare
  # trace a model too big for the GPU while running it offloaded
  pregate execute --model /data/Mixtral-8x7B --dtype bfloat16 --device cuda --cache 30% --input prompts.txt \\
      --limit 64 --batch-size 8 --max-new-tokens 64 --record-trace runs/mixtral-offloaded
  pregate execute --trace runs/sb8 --device cuda --speculation multi_layer --cache-policy lfu --cache 2GB \\
      --batch-size 16 --profile my-gpu.toml --compare --json out.json
  pregate execute --trace runs/sb8 --device cpu --speculation multi_layer --policy-arg decay=0.3 \\
      --cache-policy lfu-decay --policy-arg lfu-decay.half_life=48 --cache 25%"""


# The simulator's knobs that the executor takes as they are (one definition: simulator/settings.py).
POLICY_SETTINGS = ("speculation", "cache_policy", "cache", "per_layer", "buffering", "compression", "batch_size",
                   "max_prefetch", "predictor", "policy_args")


def add_arguments(p) -> None:
    from pregate.simulator.settings import add_settings_arguments

    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="local checkpoint folder, cached model id, or known shape name (with --random-init)")
    src.add_argument("--trace", help="trace folder: execute its routing with a synthetic model of its shapes")
    p.add_argument("--random-init", action="store_true", help="build the model's exact shape with seeded random weights")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    add_settings_arguments(p, POLICY_SETTINGS)
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate per prompt (default: 32, as in "
                   "'pregate trace')")
    p.add_argument("--input", default="builtin", help="prompts: .txt, .jsonl or 'builtin' (default)")
    p.add_argument("--limit", type=int, default=None,
                   help="use the first N prompts (default: 4, or one batch when --batch-size is larger)")
    p.add_argument("--dtype", default="", help="float32, bfloat16 or float16 (default: float32 for a model, the trace's dtype)")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights (default: 0)")
    p.add_argument("--seqs", type=int, default=None, help="with --trace: use only the first N sequences")
    p.add_argument("--profile", default=None, help="hardware profile: the cache must fit its GPU memory; "
                                                  "with --trace --compare, the simulator prices this profile")
    p.add_argument("--compare", action="store_true", help="compare with the all-resident model, or with the simulator")
    p.add_argument("--poison", action="store_true", help="fill evicted slots with NaN (a check that no slot is reused early)")
    p.add_argument("--record-trace", metavar="DIR",
                   help="with --model: also write the routing this run saw (with 'ahead' from the live routers) as "
                   "a regular trace in DIR, so a model too big for the GPU is traced offloaded")
    p.add_argument("--record-overwrite", action="store_true", help="replace an existing trace in --record-trace DIR")
    from pregate.traces.cliargs import add_json, add_quiet

    add_json(p, "the summary")
    add_quiet(p)

    p.add_argument("--threads", type=int, default=None,
                   help="torch threads on the cpu (default: 1, for stable timings when cores are shared)")

def _print(summary: dict) -> None:
    def ms(x):
        return "n/a" if x is None else f"{x * 1e3:.3f} ms"

    print(f"{summary.get('model') or summary.get('trace')} on {summary['device']}: {summary['steps']} steps, "
          f"{summary['tokens']} tokens, cache {summary['cache_capacity_experts']} experts")
    print(f"  hits {summary['hits']}  late hits {summary['late_hits']}  misses {summary['misses']}  "
          f"prefetches {summary['prefetches']} (wasted {summary['wasted_prefetches']})  "
          f"moved {summary['bytes_moved'] / 1e6:.1f} MB")
    print(f"  step latency mean {ms(summary['mean_step_latency_s'])}  p50 {ms(summary['p50_step_latency_s'])}  "
          f"p95 {ms(summary['p95_step_latency_s'])}  tokens/s {summary['tokens_per_s'] or 0:.1f}  "
          f"stall share {summary['stall_share']:.1%}")
    rec = summary.get("recorded_trace")
    if rec:
        print(f"  recorded trace {rec['out']}: {rec['rows']} rows in {rec['parts']} part(s), ahead {rec['ahead_distance']}")
    cmp = summary.get("compare")
    if cmp and "identical_tokens" in cmp:
        print(f"  vs all-resident: identical tokens {cmp['identical_tokens']}, token agreement "
              f"{cmp['generated_token_agreement']:.1%}, logits relative error {cmp['logits_relative_error']:.2e}, "
              f"teacher-forced agreement {cmp['teacher_forced_token_agreement']:.1%}")
    elif cmp:
        print(f"  simulated: mean {ms(cmp['mean_step_latency_s'])} ({cmp['rel_error_mean']:+.1%})  "
              f"p50 {ms(cmp['p50_step_latency_s'])}  p95 {ms(cmp['p95_step_latency_s'])}  "
              f"hits+late {cmp['hits'] + cmp['late_hits']} vs {summary['hits'] + summary['late_hits']}, "
              f"misses {cmp['misses']} vs {summary['misses']}")


def _prompt_limit(limit: int | None, batch_size: int) -> int:
    """Prompts to run: enough for one full batch, so --batch-size is what runs (never silently fewer)."""
    from pregate.executor.device import ExecutorError

    if limit is None:
        return max(4, batch_size)
    if limit < 1:
        raise ExecutorError(f"--limit must be at least 1, got {limit}")
    if limit < batch_size:
        raise ExecutorError(f"--batch-size {batch_size} needs at least {batch_size} prompts but --limit is {limit}: "
                            f"raise --limit to {batch_size} or lower --batch-size to {limit}")
    return limit


def _run(args) -> int:
    import json

    from pregate.executor.device import ExecutorError, check_device
    from pregate.simulator.api import resolve_policies
    from pregate.simulator.settings import settings_from_args

    check_device(args.device)
    if args.batch_size < 1:
        raise ExecutorError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.model:
        args.limit = _prompt_limit(args.limit, args.batch_size)
    settings = settings_from_args(args, POLICY_SETTINGS, dtype=args.dtype if args.trace else "", seed=args.seed,
                                  profile=args.profile or "rtx3090")
    resolve_policies(settings)
    profile = None
    if args.profile:
        from pregate.simulator.profile import load_profile

        profile = load_profile(args.profile)
    if args.trace:
        if args.record_trace:
            raise ExecutorError("--record-trace records a model's routing; with --trace the routing is the trace's own")
        summary = _run_trace(args, settings, profile)
    else:
        from pregate.executor.run import execute_model

        memory = profile["gpu.memory"] if profile else None
        result = execute_model(args.model, settings, random_init=args.random_init, device=args.device,
                               dtype=args.dtype or "float32", seed=args.seed, source=args.input, limit=args.limit,
                               max_new_tokens=args.max_new_tokens, poison=args.poison, compare=args.compare,
                               memory=memory, memory_where=f"the GPU in profile {profile.name}" if profile else "",
                               record_trace=args.record_trace, record_overwrite=args.record_overwrite)
        summary = result.summary
    summary["settings"] = settings.to_dict()
    from pregate.traces.cliargs import emit_json, json_to_stdout

    if not json_to_stdout(args):
        _print(summary)
    emit_json(args, json.dumps(summary, indent=2, default=float))
    return 0


def _run_trace(args, settings, profile) -> dict:
    from pregate.executor.run import TraceExecutor, check_fits
    from pregate.executor.stats import ks_statistic
    from pregate.simulator.api import Simulation
    from pregate.traces import validate_trace

    trace = validate_trace(args.trace)
    ex = TraceExecutor(trace, args.device, settings.dtype, seed=args.seed, seqs=args.seqs)
    settings = settings.replace(dtype=ex.dtype_name)
    stream = ex.stream(settings.batch_size)
    sim = Simulation(None, settings, profile=profile, stream=stream)
    if profile is not None:
        check_fits(profile["gpu.memory"], sim.costs.dense_bytes, ex.capacity(settings), ex.expert_bytes,
                   f"the GPU in profile {profile.name}")
    runtime = ex.run(settings, poison=args.poison)
    summary = runtime.summary()
    summary["trace"] = str(args.trace)
    if args.compare:
        result = sim.run(settings, bounds=False)
        s = result.summary
        simu = [st.latency_s for st in result.steps if st.decode] or [st.latency_s for st in result.steps]
        mean = summary["mean_step_latency_s"]
        summary["compare"] = {
            "profile": sim.profile.name,
            **{k: s[k] for k in ("hits", "late_hits", "misses", "prefetches", "bytes_moved", "mean_step_latency_s",
                                 "p50_step_latency_s", "p95_step_latency_s", "tokens_per_s", "stall_share")},
            "rel_error_mean": (s["mean_step_latency_s"] - mean) / mean if mean else None,
            "ks": ks_statistic(runtime.step_latencies(), simu),
        }
    return summary


def run(args) -> int:
    from pregate.executor.device import check_device, cpu_threads

    check_device(args.device)
    with cpu_threads(args.device, args.threads):
        return _run(args)
