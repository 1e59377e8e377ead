"""``pregate sweep``: simulate a grid of settings over traces, in parallel, resumable."""

HELP = "simulate a grid of policies, cache sizes, compression and batch sizes; results in Parquet"
DESCRIPTION = """Simulate every point of a grid: traces x profiles x speculation x caching x
buffering x cache sizes x compression x batch sizes (any Settings field can be
an axis). The grid comes from a TOML config (Settings field names; a list is an
axis) and/or from flags that take comma-separated values; a flag replaces the
config's axis of the same name.

Results go to RESULTS/points-NNNNN.parquet, one row per point, keyed by a hash
of the point's settings and the content of its trace and profile. A rerun
skips finished points; an interrupted sweep keeps the points that finished
(they are written at least once a second and whenever the sweep stops).
Runs on all local cores (--workers N), or on a Ray cluster with --ray ADDRESS
(or RAY_ADDRESS set; --ray local starts a local Ray): the numbers are the same.

examples:
  pregate sweep --trace runs/sb8 --speculation none,layer_minus_1 --cache-policy lru,lfu --cache 10%,25%,50% -o res
  pregate sweep grid.toml -o res --workers 2
  pregate sweep grid.toml -o res --ray auto                # an existing Ray cluster
  pregate sweep --trace sample:pregate-moe-tiny --profile rtx3090,t4 --batch-size 1,8 -o res
  pregate sweep --trace sample:pregate-moe-tiny --price-as switch-base-8 --dtype bfloat16,float32 -o res
  pregate sweep --trace runs/mx --speculation none,multi_layer --policy-arg multi_layer.decay=0.25,0.5,0.75 -o res
                                                           # 1 + 3 points per cache size: decay only where it applies
                                                           # the sample's routing at switch-base-8's size
  pregate report res -o report                             # plots and a summary of the results

config (grid.toml):
  trace = ["runs/sb8", "runs/mixtral"]      # relative to the config file; sample:NAME = shipped sample
  profile = "rtx3090"
  speculation = ["none", "layer_minus_1", "multi_layer"]
  cache_policy = ["lru", "lfu", "lfu-decay"]
  cache = ["10%", "25%", "50%"]
  compression = ["none", "int8"]
  batch_size = [1, 8]
  price_as = "mixtral-8x7b"                 # routing of the trace, sizes of this model (or a config file)
  "multi_layer.decay" = [0.25, 0.5]         # a policy parameter: POLICY.PARAM (quoted), or PARAM alone when
  [lfu-decay]                               # only one policy has it, or a table named after the policy
  half_life = [24, 96]

Points whose dense weights + expert cache + working margin (0.5 GB + 8%) exceed
the profile's GPU memory are marked OVER MEMORY and ranked after the points
that fit, unless --include-over-memory."""


def add_arguments(p) -> None:
    p.add_argument("config", nargs="?", help="sweep config (TOML); optional when --trace is given")
    p.add_argument("-o", "--out", required=True, metavar="RESULTS", help="results folder (created; reruns resume)")
    p.add_argument("--trace", action="append", metavar="TRACE",
                   help="trace folder (repeat or comma-separate for several; sample:NAME for a shipped sample)")
    from pregate.simulator.sweep_grid import SETTINGS_FIELDS
    from pregate.traces.cliargs import add_policy_args

    for f in SETTINGS_FIELDS.values():
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"].replace("%", "%%") + "; comma-separated values make an axis"
        p.add_argument(flag, dest=f"axis_{f.name}", metavar="V[,V...]", help=help_text)
    add_policy_args(p, "a policy parameter's values, NAME=V[,V...] (repeatable): NAME is POLICY.PARAM or a PARAM "
                       "only one policy of the grid has; the values multiply the points that choose that policy "
                       "('pregate simulate --help' lists every policy's parameters)")
    from pregate.simulator.pricing import MODEL_CONFIG_HELP

    p.add_argument("--model-config", metavar="FILE", help=MODEL_CONFIG_HELP)
    p.add_argument("--include-over-memory", action="store_true",
                   help="rank points that do not fit the GPU's memory with the others (default: after them)")
    p.add_argument("--workers", type=int, help="local worker processes (default: all cores of this machine)")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run on a Ray cluster (auto, HOST:PORT, ray://HOST:PORT, or local); default: $RAY_ADDRESS")
    p.add_argument("--local", action="store_true", help="use the local process pool even when RAY_ADDRESS is set")
    p.add_argument("--dry-run", action="store_true", help="check the grid and count the points; run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_spec(args):
    """The config file's spec with the flags' axes on top."""

    from pregate.simulator.policies.params import split_assignment
    from pregate.simulator.sweep import SweepSpec, field_kind, load_config, parse_list
    from pregate.simulator.sweep_grid import SETTINGS_FIELDS

    spec = load_config(args.config) if args.config else SweepSpec(traces=[], source="command line")
    if args.trace:
        spec.traces = [t for item in args.trace for t in parse_list(item)]
    for f in SETTINGS_FIELDS.values():
        raw = getattr(args, f"axis_{f.name}")
        if raw is not None:
            spec.grid[f.name] = parse_list(raw, field_kind(f.name))
    for item in getattr(args, "policy_args", None) or []:
        name, values = split_assignment(item)
        spec.policy_grid[name] = parse_list(values)
    if getattr(args, "model_config", None):
        from pregate.simulator.pricing import spec_from_flags

        spec.grid["price_as"] = [spec_from_flags(None, args.model_config)]
    return spec


def _check_out(out: str) -> None:
    """A results folder, or a name where one can be made: a file there is refused before any work."""
    from pathlib import Path

    from pregate.simulator.sweep import SweepError

    path = Path(out)
    for part in [path, *path.parents]:
        if part.exists() and not part.is_dir():
            what = "is a file" if part == path else f"is inside {part}, which is a file"
            raise SweepError(f"-o {out} {what}: the results go to a folder; give a new or existing folder")
        if part.exists():
            break


def run(args) -> int:
    import os
    import sys

    from pregate.simulator.ranking import format_ranking, rank
    from pregate.simulator.sweep import SweepError, plan_sweep, read_results, run_sweep

    if not args.config and not args.trace:
        raise SweepError("give a sweep config (CONFIG.toml) or --trace TRACE")
    if args.workers is not None and args.workers < 1:
        raise SweepError("--workers must be at least 1")
    _check_out(args.out)
    plan = plan_sweep(build_spec(args))
    ray_address = None if args.local else (args.ray or os.environ.get("RAY_ADDRESS") or None)
    if args.dry_run:
        from pregate.simulator.sweep import finished_keys

        done = finished_keys(args.out) if os.path.isdir(args.out) else set()
        left = sum(1 for p in plan.points if p.key not in done)
        print(f"{len(plan.points)} points, {len(plan.points) - left} already in {args.out}, {left} to run")
        return 0
    where = f"Ray ({ray_address})" if ray_address else f"{args.workers or 'all'} local worker(s)"
    print(f"sweep: {len(plan.points)} points on {where} -> {args.out}")
    try:
        outcome = run_sweep(plan, args.out, workers=args.workers, ray_address=ray_address, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"interrupted: finished points are kept in {args.out}; rerun the same command to continue",
              file=sys.stderr)
        return 130
    print(f"{outcome.ran} points simulated in {outcome.seconds:.1f} s ({outcome.points_per_s:.2f} points/s), "
          f"{outcome.skipped} already done")
    frame = read_results(args.out)
    keys = {p.key for p in plan.points}
    frame = frame.filter(frame["key"].is_in(list(keys)))
    print(format_ranking(rank(frame, include_over_memory=args.include_over_memory), limit=10))
    print(f"\nall points: pregate.simulator.sweep.read_results('{args.out}') (polars; one row per point); "
          f"plots: pregate report {args.out} -o REPORT")
    return 0
