"""The simulator at the size of real traces: speed and memory per trace row, against the code before.

Prints, in one run on one machine:

* MoE-layer steps/s of the timed run (``Simulation.timed``, stream already built)
  for a switch-base-8-like trace (top-1, 12 MoE layers) and a Mixtral-like
  trace (top-2, 32 MoE layers), with none + lru and layer_minus_1 + lru;
* fast replay (none + lru) expert requests/s;
* peak resident memory per trace row (the worker's peak RSS minus its RSS
  after imports, over the trace's rows) while building the stream and running;
* the same figures for the code of a baseline commit, extracted with
  ``git archive`` into a temporary folder and run on the same traces in
  separate processes, so every speed-up is a ratio measured side by side;
* SimPy's own rate for bare timeouts, the machine's yardstick.

Each (code, model, size) runs in its own fresh process, one at a time.

    python bench/bench_scale.py --quick                  # 20k and 100k rows, about a minute
    python bench/bench_scale.py                          # 100k, 1M and 4M rows
    python bench/bench_scale.py --sizes 100k,1M --baseline-max-rows 1M
    python bench/bench_scale.py --no-baseline

The baseline runs only up to ``--baseline-max-rows`` (default 1M): the old
stream took about 1.7 kB per row, so 4M rows would need about 7 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASELINE = "3627a8c"  # the commit before the event-lean engine and the compact stream
MODELS = {
    # name: (MoE layers, experts, top-k, d_model, d_ff, activation)
    "switch-like": (12, 8, 1, 768, 3072, "relu"),
    "mixtral-like": (32, 8, 2, 4096, 14336, "silu-glu"),
}
POLICIES = (("none", "lru"), ("layer_minus_1", "lru"))
CHECK_MAX_ROWS = 200_000  # sizes at which the default engine is compared with the Python one
TARGETS = {"mixtral_none_steps": 250e3, "mixtral_lm1_steps": 150e3, "mixtral_none_ratio": 5.0,
           "bytes_per_row_4m": 150.0}


def parse_rows(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def fmt_rows(n: int) -> str:
    return f"{n / 1e6:.3g}M" if n >= 1_000_000 else f"{n / 1e3:.3g}k"


# ---- traces -------------------------------------------------------------------------------------
def write_trace(folder: Path, model: str, rows: int, seed: int = 0, part_rows: int = 1 << 20) -> Path:
    """A decode-only trace of about ``rows`` rows: Zipf-skewed routing, each layer its own
    permutation of expert popularity, distinct top-k, and an ``ahead`` column (J = 1) that
    is the next layer's true choice 80% of the time. Vectorised, written in parts."""
    import numpy as np

    from pregate.simulator.synthetic import synthetic_meta
    from pregate.traces import TraceWriter, build_table

    layers, experts, top_k, d_model, d_ff, act = MODELS[model]
    meta = synthetic_meta(layers=layers, experts=experts, top_k=top_k, ahead=1, d_model=d_model, d_ff=d_ff)
    meta.model_id, meta.activation = f"synthetic-{model}", act
    tokens_per_seq = 256
    tokens = max(1, rows // layers)
    seqs = max(1, -(-tokens // tokens_per_seq))
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, experts + 1) ** 1.1
    popularity /= popularity.sum()
    perms = np.array([rng.permutation(experts) for _ in range(layers)])
    writer = TraceWriter(folder, meta, overwrite=True)
    seqs_per_part = max(1, part_rows // (tokens_per_seq * layers))
    done = 0
    for part, first in enumerate(range(0, seqs, seqs_per_part)):
        n_seq = min(seqs_per_part, seqs - first)
        t = min(tokens_per_seq, tokens - done // layers) if n_seq == 1 else tokens_per_seq
        n_tok = n_seq * t
        n = n_tok * layers
        seq = np.repeat(np.arange(first, first + n_seq), t * layers)
        step = np.tile(np.repeat(np.arange(1, t + 1), layers), n_seq)
        layer = np.tile(np.arange(layers), n_tok)
        first_e = rng.choice(experts, size=n, p=popularity)
        choice = np.empty((n, top_k), np.int64)
        choice[:, 0] = first_e
        for k in range(1, top_k):  # distinct: an offset in 1..experts-1 from the first
            choice[:, k] = (first_e + k * rng.integers(1, experts // top_k + 1, size=n)) % experts
        choice = perms[layer[:, None], choice]
        nxt = np.roll(choice, -1, axis=0)
        noise = (nxt + rng.integers(1, experts, size=nxt.shape)) % experts
        guess = np.where(rng.random(nxt.shape) < 0.8, nxt, noise)
        if top_k > 1:  # keep the guesses distinct within a row
            clash = guess[:, 1] == guess[:, 0]
            guess[clash, 1] = (guess[clash, 0] + 1) % experts
        probs = np.full((n, top_k), 1.0 / top_k, np.float32)
        table = build_table(
            meta, seq=seq, stack=np.full(n, "decoder"), phase=np.full(n, "decode"), step=step, pos=step - 1,
            layer=layer, token=np.zeros(n, np.int64), experts=choice, probs=probs,
            ahead=guess.reshape(n, 1, top_k), ahead_probs=np.broadcast_to(probs[:, None, :], (n, 1, top_k)).copy(),
        )
        writer.write(part, table)
        done += n
    return folder


# ---- one measurement, in its own process ----------------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(trace_path: str, cache: str) -> dict:
    """Build the stream once, then replay and the timed runs; peak RSS over all of it."""
    from pregate.simulator import Settings, Simulation
    from pregate.traces import open_trace

    warm = 0.0
    for kernel in ("engine_compiled", "engine_compiled_prefetch"):
        try:  # the compiled kernels' one-time load, outside the timings (absent in the baseline)
            warm += __import__(f"pregate.simulator.{kernel}", fromlist=["warm_up"]).warm_up()
        except ImportError:
            pass
    base = rss_bytes()
    trace = open_trace(trace_path)
    rows = trace.num_rows
    start = time.perf_counter()
    settings = Settings(speculation="none", cache_policy="lru", cache=cache)
    sim = Simulation(trace, settings)
    out = {"rows": rows, "build_s": time.perf_counter() - start, "layer_steps": sim.stream.n_layer_steps,
           "requests": sim.stream.n_requests, "warm_up_s": warm, "base_rss": base}
    start = time.perf_counter()
    sim.replay(settings)
    out["replay_rps"] = sim.stream.n_requests / (time.perf_counter() - start)
    for spec, policy in POLICIES:
        s = settings.replace(speculation=spec, cache_policy=policy)
        start = time.perf_counter()
        outcome, cache = sim.timed(s)
        seconds = time.perf_counter() - start
        out[f"{spec}+{policy}_prefetches"] = cache.counts.prefetches
        out[f"{spec}+{policy}"] = sim.stream.n_layer_steps / seconds
        out[f"{spec}+{policy}_s"] = seconds
        out[f"{spec}+{policy}_total_s"] = outcome.total_s
        out[f"{spec}+{policy}_engine"] = getattr(outcome, "engine", "") or "event-lean or simpy (no engine field)"
        del outcome  # one run's outcome at a time: the peak is that of a run, not of two runs' records
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if rows <= CHECK_MAX_ROWS:  # after the peak is taken: the Python engine's lists are not what is measured
        out["same_as_python"] = same_as_python_engine(sim, settings)
    out["peak_rss"] = peak
    out["bytes_per_row"] = (peak - base) / rows
    out["where"] = where_bytes_go(sim, rows)
    return out


def where_bytes_go(sim, rows: int) -> dict:
    """Bytes per trace row of what stays resident: the stream's arrays by field, the cost tables'."""
    import numpy as np

    where = {}
    for name, value in vars(sim.stream).items():
        if isinstance(value, np.ndarray):
            where[f"{name} {value.dtype}"] = value.nbytes / rows
    for j, arrays in getattr(sim.stream, "ahead", {}).items():
        for part, value in zip(("starts", "objects", "scores"), arrays):
            where[f"ahead[{j}].{part} {value.dtype}"] = value.nbytes / rows
    for name, value in vars(sim.costs).items():
        if isinstance(value, np.ndarray):
            where[f"costs.{name} {value.dtype}"] = value.nbytes / rows
    return where


def same_as_python_engine(sim, settings) -> bool | None:
    """Whether the default engine's outcomes (compiled where a kernel applies) equal the event-lean
    Python engine's, every step record included, for both policy pairs (None: the code has no such
    switch, as in the baseline)."""
    import inspect

    from pregate.simulator.engine import run_timed

    if "compiled" not in inspect.signature(run_timed).parameters:
        return None
    same = True
    for spec, policy in POLICIES:
        s = settings.replace(speculation=spec, cache_policy=policy)
        engines = s.copy_engines or int(sim.profile["pcie.copy_engines"])
        outcomes = []
        for compiled in (True, False):
            cache, planner, buffering, comp = sim._parts(s)
            outcomes.append(run_timed(sim.stream, sim.costs.for_policy(s.cache_policy), planner, cache,
                                      demand_dtype=comp.demand_dtype(sim.gpu_dtype),
                                      prefetch_dtype=comp.prefetch_dtype(sim.gpu_dtype), copy_engines=engines,
                                      all_resident=buffering.all_resident, compiled=compiled))
        same = same and outcomes[0] == outcomes[1]
    return same


def simpy_rate(n: int) -> float:
    """Bare SimPy timeouts per second: one process yielding ``n`` timeouts."""
    import simpy

    env = simpy.Environment()

    def proc():
        for _ in range(n):
            yield env.timeout(1.0)

    env.process(proc())
    start = time.perf_counter()
    env.run()
    return n / (time.perf_counter() - start)


# ---- the baseline checkout ------------------------------------------------------------------------
def baseline_site(commit: str, root: Path) -> Path:
    """The baseline's source via ``git archive``, laid out as an importable ``pregate`` package."""
    src = root / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    site = root / "site"
    pkg = site / "pregate"
    shutil.copytree(src / "pregate", pkg)
    for part in ("traces", "tracer", "simulator", "executor", "analysis"):
        if (src / part).exists():
            (pkg / part).symlink_to(src / part)
    return site


def run_worker(site: Path | None, trace: Path, cache: str, timeout: float) -> dict | None:
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = str(site)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(trace), "--cache", cache]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def mark(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="20k and 100k rows only (for development)")
    parser.add_argument("--sizes", default="", help="comma-separated row counts, e.g. 100k,1M,4M")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--cache", default="50%", help="cache size of every run (default 50%%)")
    parser.add_argument("--baseline", default=BASELINE, help=f"commit to compare with (default {BASELINE})")
    parser.add_argument("--no-baseline", action="store_true", help="measure this checkout only")
    parser.add_argument("--baseline-max-rows", default="1M", help="largest trace the baseline runs (default 1M)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per measurement process")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.cache)))
        return 0
    sizes = [parse_rows(s) for s in args.sizes.split(",")] if args.sizes else \
        ([20_000, 100_000] if args.quick else [100_000, 1_000_000, 4_000_000])
    models = [m.strip() for m in args.models.split(",")]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        print(f"unknown model {unknown[0]!r} (valid: {', '.join(MODELS)})", file=sys.stderr)
        return 2
    base_max = parse_rows(args.baseline_max_rows)
    with tempfile.TemporaryDirectory(prefix="pregate-bench-scale-") as tmp:
        tmp = Path(tmp)
        site = None if args.no_baseline else baseline_site(args.baseline, tmp / "baseline")
        rate = simpy_rate(200_000)
        print(f"machine yardstick: SimPy bare timeouts {rate / 1e3:.0f}k/s (one process, 200k timeouts)")
        print(f"cache {args.cache} of the experts; baseline: {'none' if site is None else args.baseline}"
              f" (up to {fmt_rows(base_max)} rows)\n")
        header = f"{'model':<13} {'rows':>5} {'code':<8} {'build s':>8} {'none+lru':>10} {'lm1+lru':>10} " \
                 f"{'replay':>10} {'B/row':>7} {'peak MiB':>8}"
        print("timed run: MoE-layer steps/s of Simulation.timed (stream built); replay: requests/s (none+lru);")
        print("B/row: (peak RSS - RSS after imports) / trace rows; peak MiB: the process's peak RSS")
        print("same simulated totals as the baseline: the model itself changed after the baseline commit (the\n"
              "prefetch gate, the runtime's host costs), so 'no' is expected there; the engines of this checkout\n"
              f"are compared with its event-lean Python engine at up to {fmt_rows(CHECK_MAX_ROWS)} rows instead\n")
        print(header)
        results = {}
        for model in models:
            for rows in sizes:
                trace = write_trace(tmp / f"{model}-{rows}", model, rows)
                for code in ("new", "base"):
                    if code == "base" and (site is None or rows > base_max):
                        continue
                    r = run_worker(site if code == "base" else None, trace, args.cache, args.timeout)
                    results[(model, rows, code)] = r
                    if "error" in r:
                        print(f"{model:<13} {fmt_rows(rows):>5} {code:<8} failed: {r['error']}", flush=True)
                        continue
                    print(f"{model:<13} {fmt_rows(r['rows']):>5} {code:<8} {r['build_s']:>8.1f} "
                          f"{r['none+lru'] / 1e3:>9.1f}k {r['layer_minus_1+lru'] / 1e3:>9.1f}k "
                          f"{r['replay_rps'] / 1e6:>9.2f}M {r['bytes_per_row']:>7.0f} {r['peak_rss'] / 2**20:>8.0f}",
                          flush=True)
                    if code == "new":
                        same = {True: "yes", False: "NO", None: "not checked"}[r.get("same_as_python")]
                        print(f"{'':<13} {'':>5} {'engine':<8} none+lru: {r['none+lru_engine']}; "
                              f"lm1+lru: {r['layer_minus_1+lru_engine']} "
                              f"({r['layer_minus_1+lru_prefetches']} prefetches issued)"
                              + (f"; same outcomes as the Python engine: {same}" if rows <= CHECK_MAX_ROWS else ""))
                    if code == "base":
                        new = results[(model, rows, "new")]
                        if "error" not in new:
                            same = new["none+lru_total_s"] == r["none+lru_total_s"] and \
                                new["layer_minus_1+lru_total_s"] == r["layer_minus_1+lru_total_s"]
                            print(f"{'':<13} {'':>5} {'ratio':<8} {r['build_s'] / new['build_s']:>7.1f}x "
                                  f"{new['none+lru'] / r['none+lru']:>9.1f}x "
                                  f"{new['layer_minus_1+lru'] / r['layer_minus_1+lru']:>9.1f}x "
                                  f"{new['replay_rps'] / r['replay_rps']:>9.1f}x "
                                  f"{r['bytes_per_row'] / max(new['bytes_per_row'], 1e-9):>6.1f}x"
                                  f"   same simulated totals as the baseline: {'yes' if same else 'no'}")
                shutil.rmtree(trace)
        print()
        report_targets(results, models, sizes, args.baseline)
    return 0


def report_targets(results: dict, models: list[str], sizes: list[int], baseline: str = BASELINE) -> None:
    ok = {k: v for k, v in results.items() if "error" not in v}
    mix = [rows for rows in sizes if ("mixtral-like", rows, "new") in ok]
    if mix:
        big = max(mix)
        new = ok[("mixtral-like", big, "new")]
        print(f"target: Mixtral-like none+lru >= 250k steps/s at {fmt_rows(big)}: {new['none+lru'] / 1e3:.0f}k "
              f"{mark(new['none+lru'] >= TARGETS['mixtral_none_steps'])}")
        print(f"target: Mixtral-like layer_minus_1+lru >= 150k steps/s at {fmt_rows(big)}: "
              f"{new['layer_minus_1+lru'] / 1e3:.0f}k {mark(new['layer_minus_1+lru'] >= TARGETS['mixtral_lm1_steps'])}")
        paired = [rows for rows in mix if ("mixtral-like", rows, "base") in ok]
        for rows in paired:
            ratio = ok[("mixtral-like", rows, "new")]["none+lru"] / ok[("mixtral-like", rows, "base")]["none+lru"]
            if baseline == BASELINE:  # the target is against the code before the event-lean engine
                print(f"target: Mixtral-like none+lru >= 5x the baseline at {fmt_rows(rows)}: {ratio:.1f}x "
                      f"{mark(ratio >= TARGETS['mixtral_none_ratio'])}")
            else:
                print(f"Mixtral-like none+lru against baseline {baseline} at {fmt_rows(rows)}: {ratio:.2f}x "
                      f"(the 5x target is against {BASELINE}; not judged here)")
    print("flat cost per row: steps/s at the largest size at least 80% of the smallest size's (time per step\n"
          "up by at most 20%) AND bytes per row at the largest size not above the next smaller size's (a fixed\n"
          "cost makes bytes per row fall with size; a cost per row that grows shows as a rise)")
    for model in models:
        have = sorted(rows for rows in sizes if (model, rows, "new") in ok)
        if len(have) >= 2:
            lo, mid, hi = ok[(model, have[0], "new")], ok[(model, have[-2], "new")], ok[(model, have[-1], "new")]
            mem_ok = hi["bytes_per_row"] <= mid["bytes_per_row"]
            for pol in ("none+lru", "layer_minus_1+lru"):
                speed = hi[pol] / lo[pol]
                print(f"target: {model} {pol} flat {fmt_rows(have[0])} -> {fmt_rows(have[-1])}: steps/s "
                      f"{lo[pol] / 1e3:.0f}k -> {hi[pol] / 1e3:.0f}k (x{speed:.2f}, {mark(speed >= 0.8)}); bytes/row "
                      f"at {fmt_rows(have[-2])} {mid['bytes_per_row']:.0f} -> at {fmt_rows(have[-1])} "
                      f"{hi['bytes_per_row']:.0f} ({mark(mem_ok)}): {mark(speed >= 0.8 and mem_ok)}")
    print("\nthe same, marginal: what each extra row costs between the smallest and the largest size,\n"
          "(time_big - time_small) / (steps_big - steps_small) against the smallest size's time per step, and\n"
          "(peak_big - peak_small) / (rows_big - rows_small) bytes; a fixed cost (imports, buffers, the polars\n"
          "working set of one chunk) is left out. A reading next to the target, not the target itself:")
    for model in models:
        have = [rows for rows in sizes if (model, rows, "new") in ok]
        if len(have) >= 2:
            lo, hi = ok[(model, min(have), "new")], ok[(model, max(have), "new")]
            extra = (hi["peak_rss"] - hi["base_rss"] - lo["peak_rss"] + lo["base_rss"]) / (hi["rows"] - lo["rows"])
            for pol in ("none+lru", "layer_minus_1+lru"):
                if f"{pol}_s" not in lo:
                    continue
                per_lo = lo[f"{pol}_s"] / lo["layer_steps"]
                marginal = (hi[f"{pol}_s"] - lo[f"{pol}_s"]) / (hi["layer_steps"] - lo["layer_steps"])
                print(f"  {model} {pol} {fmt_rows(min(have))} -> {fmt_rows(max(have))}: marginal time per step "
                      f"x{marginal / per_lo:.2f} of the smallest size's; marginal memory {extra:.0f} B/row")
    four = [k for k in ok if k[1] >= 4_000_000 and k[2] == "new"]
    for key in four:
        b = ok[key]["bytes_per_row"]
        where = ok[key].get("where", {})
        if where:
            known = sum(where.values())
            print(f"where the bytes go at {fmt_rows(key[1])} ({key[0]}): " + ", ".join(
                f"{k} {v:.1f}" for k, v in sorted(where.items(), key=lambda kv: -kv[1]) if v >= 0.05))
            print(f"  arrays {known:.0f} B/row of the {b:.0f} measured; the rest ({b - known:.0f}) is the allocators'"
                  f" working sets (polars, pyarrow), the step records and a run's temporaries")
        print(f"target: <= 150 B resident per row at {fmt_rows(key[1])} ({key[0]}): {b:.0f} B "
              f"{mark(b <= TARGETS['bytes_per_row_4m'])}; 32M rows at that rate: {32e6 * b / 2**30:.1f} GiB "
              f"{mark(32e6 * b < 8 * 2**30)} (< 8 GB)")


if __name__ == "__main__":
    sys.exit(main())
