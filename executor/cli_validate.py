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
  pregate validate runs/sb8 --profile gpu.toml --runtime gpu.runtime.toml --device cuda"""


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
    p.add_argument("--cache", default=None, help="comma list of cache sizes (default: 25%%,50%%)")
    p.add_argument("--batch-size", default=None, help="comma list of batch sizes (default: 1,16)")
    p.add_argument("--groups", type=int, default=None, help="batches of sequences to run per batch size (default: all)")
    p.add_argument("--dtype", default="", help="dtype on the device (default: the trace's)")
    p.add_argument("--warmup", type=int, default=None, help="forward passes run before each measurement")
    p.add_argument("--quick", action="store_true", help="two policy pairs, one cache size, batch 1, two groups")
    p.add_argument("--repeats", type=int, default=None,
                   help="rounds over all settings; each point keeps its fastest round, which filters out slow "
                        "spells of a shared machine (default: 2 on cuda, 1 on cpu)")

    p.add_argument("--threads", type=int, default=None,
                   help="torch threads on the cpu (default: 1, for stable timings when cores are shared)")

def _run(args) -> int:
    from pregate.executor.device import ExecutorError, check_device
    from pregate.executor.validate import validate, write_outputs
    from pregate.executor.validate import default_runtime
    from pregate.simulator.profile import load_profile
    from pregate.simulator.runtime import load_runtime

    check_device(args.device)
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
    repeats = args.repeats if args.repeats is not None else (2 if args.device == "cuda" else 1)
    if repeats < 1:
        raise ExecutorError(f"--repeats must be at least 1, got {repeats}")
    result = validate(args.traces, args.profile, args.device, policies=args.policies, caches=caches,
                      batch_sizes=batches, dtype=args.dtype, groups=args.groups, warmup=args.warmup,
                      quick=args.quick, repeats=repeats, log=lambda m: print(f"  {m}"), runtime_path=args.runtime)
    files = write_outputs(result, args.out)
    s = result["summary"]

    def pct(x):
        return "n/a" if x is None else f"{x:.1%}"

    print(f"{s['points']} points: median |error| {pct(s['median_abs_error'])}, P95 |error| {pct(s['p95_abs_error'])}, "
          f"Kendall tau {s['kendall_tau']:.3f}, counts agree {s['counts_agree']}")
    if s.get("skipped"):
        print(f"{s['skipped']} point(s) could not run (listed under 'skipped' in validation.json)")
    print("wrote " + ", ".join(str(f) for f in files))
    return 1 if s.get("skipped") else 0


def run(args) -> int:
    from pregate.executor.device import check_device, cpu_threads

    check_device(args.device)
    with cpu_threads(args.device, args.threads):
        return _run(args)
