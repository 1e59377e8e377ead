"""``pregate validate``: measured against simulated, over a matrix of settings."""

HELP = "run the executor and the simulator on the same traces and compare step latencies"
DESCRIPTION = """For each trace, batch size, speculation+caching pair and cache size: execute the
trace's routing on the device (a synthetic model of its shapes) and simulate
it with the given profile. Reports measured and simulated mean / P50 / P95
step latency, their relative error and the KS statistic per point; overall
the median and P95 absolute error and Kendall's tau between the rankings.
Writes validation.json, points.csv and scatter.png (with matplotlib) to -o.

examples:
  pregate calibrate --device cuda -o gpu.toml && pregate validate runs/sb8 --profile gpu.toml --device cuda
  pregate validate runs/sb8 runs/mx --profile gpu.toml --device cuda --policies none+lru,layer_minus_1+lru \\
      --cache 25%,50% --batch-size 1,16 -o out/validate
  pregate validate runs/tiny --profile cpu.toml --device cpu --quick
  pregate validate runs/tiny --profile cpu.toml --device cpu --quick --clock wall   # as calibrated with --clock wall
  pregate validate runs/tiny --profile cpu.toml --device cpu --quick --placements static-layers,cpu-or-fetch
  pregate validate runs/sb8 --profile gpu.toml --runtime gpu.runtime.toml --device cuda
  pregate validate runs/sb8 --profile gpu.toml --device cuda --speculation none,layer_minus_1 --cache-policy lru,lfu
  pregate validate runs/tiny --profile cpu.toml --speculation multi_layer --cache-policy s3fifo \\
      --policy-arg decay=0.3 --policy-arg to_main=3 --quick

--speculation and --cache-policy take comma lists as in 'pregate sweep' and
validate every pair of them; --policies names the pairs one by one instead."""


def add_arguments(p) -> None:
    p.add_argument("traces", nargs="+", metavar="TRACE", help="trace folder(s)")
    p.add_argument("--profile", required=True, help="profile TOML (from 'pregate calibrate') or a built-in name")
    p.add_argument("--runtime", default="", help="runtime profile that prices the host (default: PROFILE.runtime.toml "
                                                "next to a calibrated PROFILE.toml, else the profile file's own "
                                                "or pregate-eager)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("-o", "--out", default="validate-out", help="output folder (default: validate-out)")
    p.add_argument("--policies", default=None, help="comma list of SPECULATION+CACHING pairs "
                                                  "(default: none+lru,layer_minus_1+lru,none+lfu,multi_layer+least-stale)")
    p.add_argument("--speculation", default=None, metavar="V[,V...]",
                   help="speculation policies, comma-separated (with --cache-policy: every pair is validated)")
    p.add_argument("--cache-policy", default=None, metavar="V[,V...]",
                   help="caching policies, comma-separated (default with --speculation: lru)")
    from pregate.traces.cliargs import add_policy_args

    add_policy_args(p, "a policy parameter, NAME=VALUE (repeatable), applied to every point whose policy has it: "
                       "POLICY.PARAM or a PARAM only one validated policy has ('pregate simulate --help' lists them)")
    p.add_argument("--cache", default=None, help="comma list of cache sizes (default: 25%%,50%%)")
    p.add_argument("--placements", default=None, metavar="B[,B...]",
                   help="CPU-or-GPU buffering schemes validated besides the cache, once per cache size with "
                        "none+lru, or 'none' (default: cpu_compute,static-layers,static-hot,cpu-or-fetch; "
                        "none with --quick)"),
    p.add_argument("--batch-size", default=None, help="comma list of batch sizes (default: 1,16)")
    p.add_argument("--groups", type=int, default=None, help="batches of sequences to run per batch size (default: all)")
    p.add_argument("--dtype", default="", help="dtype on the device (default: the trace's)")
    p.add_argument("--warmup", type=int, default=None, help="forward passes run before each measurement")
    p.add_argument("--quick", action="store_true", help="two policy pairs, one cache size, batch 1, two groups")
    p.add_argument("--repeats", type=int, default=None,
                   help="rounds over all settings; each point keeps its fastest round, which filters out slow "
                        "spells of a shared machine (default: 2 on cuda, 1 on cpu)")

    from pregate.traces.cliargs import add_quiet

    add_quiet(p)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads on the cpu (default: 1, for stable timings when cores are shared)")
    p.add_argument("--clock", choices=("wall", "cpu"), default=None,
                   help="what timings read: 'cpu' = the host thread's CPU time (default on the cpu device: with "
                        "one thread it is the step's time on an idle core, repeatable when cores are shared), "
                        "'wall' = the wall clock (default and only choice on cuda); calibrate and validate "
                        "must use the same")

def _policy_pairs(args) -> str | None:
    """SPECULATION+CACHING pairs from --policies, or the product of --speculation and --cache-policy."""
    from pregate.executor.device import ExecutorError

    if args.speculation is None and args.cache_policy is None:
        return args.policies
    if args.policies is not None:
        raise ExecutorError("give either --policies (pairs) or --speculation/--cache-policy (every pair), not both")
    specs = [s.strip() for s in (args.speculation or "none").split(",") if s.strip()]
    cachings = [c.strip() for c in (args.cache_policy or "lru").split(",") if c.strip()]
    if not specs or not cachings:
        raise ExecutorError("--speculation and --cache-policy need at least one name each")
    return ",".join(f"{s}+{c}" for s in specs for c in cachings)


def _log(bar, message: str) -> None:
    """A line above the bar once it runs; before the first run, a plain line (the bar stays unborn,
    so a refusal that follows is still the only thing on its line)."""
    if bar.n:
        bar.write(f"  {message}")
    else:
        import sys

        print(f"  {message}", file=sys.stderr)


def _run(args) -> int:
    from pregate.executor.device import ExecutorError, check_device
    from pregate.executor.validate import load_note, validate, write_outputs
    from pregate.executor.validate import default_runtime
    from pregate.simulator.profile import load_profile
    from pregate.simulator.runtime import load_runtime

    check_device(args.device)
    from pathlib import Path

    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():  # before the runs, not after
        raise ExecutorError(f"-o {args.out} is a file: the validation goes to a folder; give a new or existing folder")
    load_runtime(args.runtime or default_runtime(args.profile), load_profile(args.profile))  # fail before running
    try:
        batches = [int(b) for b in args.batch_size.split(",")] if args.batch_size else None
    except ValueError:
        raise ExecutorError(f"--batch-size '{args.batch_size}' is not a comma list of integers") from None
    if batches and min(batches) < 1:
        raise ExecutorError("--batch-size values must be at least 1")
    if args.groups is not None and args.groups < 1:
        raise ExecutorError(f"--groups must be at least 1, got {args.groups}")
    caches = args.cache.split(",") if args.cache else None
    policies = _policy_pairs(args)
    repeats = args.repeats if args.repeats is not None else (2 if args.device == "cuda" else 1)
    if repeats < 1:
        raise ExecutorError(f"--repeats must be at least 1, got {repeats}")
    from tqdm.auto import tqdm

    # one tick per executor run, with an estimate of the time left; lines print above the bar
    # delay: nothing is drawn before the first run ends, so a refusal before it stays one clean line
    with tqdm(total=None, desc="validate", unit="run", disable=args.quiet, dynamic_ncols=True, delay=0.5) as bar:
        result = validate(args.traces, args.profile, args.device, policies=policies, caches=caches,
                          batch_sizes=batches, dtype=args.dtype, groups=args.groups, warmup=args.warmup,
                          quick=args.quick, repeats=repeats, bar=bar, runtime_path=args.runtime,
                          placements=args.placements,
                          policy_args=args.policy_args or (),
                          log=(lambda m: None) if args.quiet else (lambda m: _log(bar, m)))
    files = write_outputs(result, args.out)
    s = result["summary"]

    def pct(x):
        return "n/a" if x is None else f"{x:.1%}"

    print(f"priced with profile {result['profile']} and runtime {result['runtime']}")
    print(f"{s['points']} points: median |error| {pct(s['median_abs_error'])}, P95 |error| {pct(s['p95_abs_error'])}, "
          f"Kendall tau {s['kendall_tau']:.3f}, counts agree {s['counts_agree']}")
    note = load_note(result)
    if note:
        print(note)
    if s.get("skipped"):
        print(f"{s['skipped']} point(s) could not run (listed under 'skipped' in validation.json)")
    print("wrote " + ", ".join(str(f) for f in files))
    return 1 if s.get("skipped") else 0


def run(args) -> int:
    from pregate.executor.device import check_device, cpu_threads, step_clock

    check_device(args.device)
    with cpu_threads(args.device, args.threads), step_clock(args.device, args.clock):
        return _run(args)
