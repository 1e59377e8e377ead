"""``pregate calibrate``: measure this machine into a hardware profile and a runtime profile."""

HELP = "measure the present device into a hardware profile and a runtime profile (TOML) the simulator loads"
DESCRIPTION = """Measure host-to-device copies (pinned and pageable, by size; fitted to a fixed
cost per copy plus bytes / bandwidth), expert FFN time by token count for the
given expert shapes, matmul rates, memory bandwidth, kernel launch and host
dispatch costs, the router's read-back, dequantisation throughput, how
much a copy slows concurrent compute, and the planner's own time for every
speculation and caching policy pair (timed alone over a tiny synthetic
trace: a speculative planner can cost ten times none+lru's). Writes a profile in the simulator's
schema (every value with unit, kind and source, device, driver and library
versions in its header), PROFILE.runtime.toml with the executor's host costs
on this machine (pass it as --runtime) and PROFILE.calibration.json with the
raw tables. --convert turns a profile written before hardware and runtime were
split (schema pregate.profile/1) into the two files, pricing exactly as before.

examples:
  pregate calibrate --device cuda -o profiles/my-gpu.toml
  pregate calibrate --device cuda -o my-gpu.toml --expert-shape 768x3072 --expert-shape 4096x14336:gated
  pregate calibrate --device cuda -o my-gpu.toml --trace runs/sb8 --dtype bfloat16
  pregate calibrate --device cpu -o cpu.toml --quick          # under a minute
  pregate calibrate --device cpu -o cpu.toml --quick --clock wall   # wall clock (validate with --clock wall too)
  pregate calibrate --convert old-gpu.toml -o gpu.toml         # writes gpu.toml and gpu.runtime.toml"""


def add_arguments(p) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("-o", "--out", required=True, metavar="PROFILE.toml", help="profile file to write")
    p.add_argument("--quick", action="store_true", help="fewer sizes and repetitions (under a minute on the cpu)")
    p.add_argument("--expert-shape", action="append", default=[], metavar="DxF[:gated]",
                   help="expert shape to time (repeatable; default: 768x3072, and 4096x14336:gated on cuda)")
    p.add_argument("--trace", action="append", default=[], help="also time the expert shape of this trace (repeatable)")
    p.add_argument("--dtype", default="", help="dtype of expert timings (default: bfloat16 on cuda, float32 on cpu)")
    p.add_argument("--convert", metavar="OLD.toml", default=None,
                   help="measure nothing: split a schema pregate.profile/1 file into -o and its .runtime.toml")

    from pregate.traces.cliargs import add_quiet

    add_quiet(p)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads on the cpu (default: 1, for stable timings when cores are shared)")
    p.add_argument("--clock", choices=("wall", "cpu"), default=None,
                   help="what timings read: 'cpu' = the host thread's CPU time (default on the cpu device: with "
                        "one thread it is the step's time on an idle core, repeatable when cores are shared), "
                        "'wall' = the wall clock (default and only choice on cuda); calibrate and validate "
                        "must use the same")

def _run(args) -> int:
    from pregate.executor.calibrate import calibrate, convert_profile, parse_shape, runtime_path, write_profile
    from pregate.executor.device import check_device

    if args.convert:
        hardware, runtime = convert_profile(args.convert, args.out)
        print(f"wrote {hardware} and {runtime}")
        return 0

    check_device(args.device)
    from pathlib import Path

    from pregate.executor.device import ExecutorError

    out = Path(args.out)
    if out.suffix != ".toml" or out.is_dir():  # refused before minutes of measuring, not after
        raise ExecutorError(f"-o {out}: give the profile's file name, ending in .toml (e.g. my-gpu.toml)")
    shapes = list(args.expert_shape)
    for text in shapes:
        parse_shape(text)
    metas = []
    for trace in args.trace:
        from pregate.traces import open_trace

        meta = open_trace(trace).meta
        metas.append(meta)
        act = (meta.activation or "").lower()
        shapes.append(f"{meta.d_model}x{meta.d_ff}" + (":gated" if "gated" in act or "glu" in act else ""))
    shapes = list(dict.fromkeys(shapes)) or None
    from tqdm.auto import tqdm

    from pregate.executor.calibrate import DEFAULT_SHAPES

    # one tick per measurement stage (copies, matmuls, launches, ..., each expert shape): the estimate of the
    # time left assumes later stages take as long as the earlier ones did, so it is rough
    stages = 6 + (1 if args.device.startswith("cuda") else 0) + len(metas) + len(shapes or DEFAULT_SHAPES.get(
        "cuda" if args.device.startswith("cuda") else "cpu", ()))
    with tqdm(total=stages, desc="calibrate", unit="stage", disable=args.quiet, dynamic_ncols=True, delay=0.5) as bar:
        begun = []

        def log(message: str) -> None:  # a stage begins: the one before it has ended
            if begun:
                bar.update(1)
            begun.append(message)
            bar.write(f"  {message}")

        text, details = calibrate(args.device, quick=args.quick, shapes=shapes, dtype=args.dtype,
                                  log=(lambda m: None) if args.quiet else log, traces=metas)
        bar.update(max(0, (bar.total or 0) - bar.n))
    path, side = write_profile(args.out, text, details)
    v = details["values"]
    print(f"wrote {path} (and {runtime_path(path).name}, {side.name}): pinned {v['pcie.pinned_bandwidth']['value'] / 1e9:.1f} GB/s, "
          f"pageable {v['pcie.pageable_bandwidth']['value'] / 1e9:.1f} GB/s, "
          f"copy latency {v['pcie.copy_latency']['value'] * 1e6:.1f} us, "
          f"dispatch {v['host.dispatch_per_kernel']['value'] * 1e6:.1f} us/kernel")
    store = details.get("copies_from_a_large_store")
    if store:
        print(f"  8 MiB rows from a {store['store_bytes'] / 2**30:.2g} GiB host store: "
              f"{store['bandwidth_Bps'] / 1e9:.1f} GB/s (in {side.name}; the profile keeps the fit above)")
    return 0


def run(args) -> int:
    from pregate.executor.device import check_device, cpu_threads, step_clock

    check_device(args.device)
    with cpu_threads(args.device, args.threads), step_clock(args.device, args.clock):
        return _run(args)
