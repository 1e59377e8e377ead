"""Simulator throughput, measured in one run on this machine (ARCHITECTURE.md targets).

* fast replay >= 2M expert requests/s on one core, and faster than libCacheSim
  driven request by request from Python on the same stream;
* timed run >= 100k MoE-layer steps/s (and its speed-up over the SimPy reference engine).

Prints the measured figures and ratios; a missed target is reported as missed.
Usage: python bench/bench_simulator.py [--seqs 200] [--tokens 100]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from pregate.simulator import Settings, Simulation
from pregate.simulator.engine import run_timed
from pregate.simulator.stream import build_stream
from pregate.simulator.synthetic import synthetic_meta
from pregate.traces import TraceWriter, build_table, open_trace


def write_trace(folder: Path, seqs: int, tokens: int, layers: int, experts: int, seed: int = 0) -> Path:
    """A decode-only top-1 trace with Zipf-skewed, per-layer-permuted routing (vectorised)."""
    rng = np.random.default_rng(seed)
    meta = synthetic_meta(layers=layers, experts=experts, top_k=1, ahead=1)
    n = seqs * tokens * layers
    seq = np.repeat(np.arange(seqs), tokens * layers)
    step = np.tile(np.repeat(np.arange(1, tokens + 1), layers), seqs)
    layer = np.tile(np.arange(layers), seqs * tokens)
    popularity = 1.0 / np.arange(1, experts + 1) ** 1.1
    popularity /= popularity.sum()
    perms = np.array([rng.permutation(experts) for _ in range(layers)])
    choice = perms[layer, rng.choice(experts, size=n, p=popularity)]
    ahead = np.roll(choice, -1).reshape(n, 1, 1)
    table = build_table(
        meta, seq=seq, stack=np.full(n, "decoder"), phase=np.full(n, "decode"), step=step, pos=step - 1,
        layer=layer, token=np.zeros(n, np.int64), experts=choice.reshape(n, 1), probs=np.ones((n, 1), np.float32),
        ahead=ahead, ahead_probs=np.ones((n, 1, 1), np.float32),
    )
    TraceWriter(folder, meta, overwrite=True).write(0, table)
    return folder


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def libcachesim_seconds(objs: list[int], capacity: int) -> float | None:
    try:
        import libcachesim as lcs
    except ImportError:
        return None

    def drive():
        cache = lcs.LRU(capacity)
        req = lcs.Request(obj_size=1)
        get = cache.get
        for obj in objs:
            req.obj_id = obj
            get(req)

    return best_of(drive)


def reference_run(sim, settings):
    """The SimPy reference engine on the same prepared simulation."""
    cache, planner, buffering, comp = sim._parts(settings)
    return run_timed(sim.stream, sim.costs, planner, cache, demand_dtype=comp.demand_dtype(sim.gpu_dtype),
                     prefetch_dtype=comp.prefetch_dtype(sim.gpu_dtype),
                     copy_engines=settings.copy_engines or int(sim.profile["pcie.copy_engines"]),
                     all_resident=buffering.all_resident, reference=True)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqs", type=int, default=200)
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--experts", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trace = open_trace(write_trace(Path(tmp) / "bench", args.seqs, args.tokens, args.layers, args.experts))
        stream = build_stream(trace)
        n_req, n_ls = stream.n_requests, stream.n_layer_steps
        print(f"stream: {n_req} expert requests, {n_ls} MoE-layer steps "
              f"({args.seqs} seqs x {args.tokens} tokens x {args.layers} layers, {args.experts} experts, top-1)")
        capacity_text = "25%"
        sim = Simulation(trace, Settings(cache=capacity_text), stream=stream)
        capacity = sim.capacity(sim.settings)

        print("\nfast replay (counts only, one core):")
        rates = {}
        for policy in ("lru", "fifo", "lfu", "belady"):
            settings = Settings(cache=capacity_text, cache_policy=policy)
            seconds = best_of(lambda: sim.replay(settings, fast=True))
            rates[policy] = n_req / seconds
            print(f"  {policy:7s} {rates[policy] / 1e6:6.2f} M requests/s")
        general = best_of(lambda: sim.replay(Settings(cache=capacity_text, cache_policy="lru"), fast=False), 1)
        print(f"  lru via the general planner path: {n_req / general / 1e6:.2f} M requests/s")
        ok = rates["lru"] >= 2e6
        print(f"  target >= 2M requests/s (lru): {rates['lru'] / 1e6:.2f} M/s -> {verdict(ok)}")

        lcs_seconds = libcachesim_seconds(stream.req_obj.tolist(), capacity)
        if lcs_seconds is None:
            print("  libCacheSim not installed: comparison skipped")
        else:
            lcs_rate = n_req / lcs_seconds
            ratio = rates["lru"] / lcs_rate
            print(f"  libCacheSim LRU driven from Python: {lcs_rate / 1e6:.2f} M requests/s; "
                  f"fast replay / libCacheSim = {ratio:.2f}x -> {verdict(ratio > 1)}")

        print("\ntimed run (the default engine, and the SimPy reference it equals):")
        for spec, policy in (("none", "lru"), ("layer_minus_1", "lru"), ("oracle", "belady")):
            settings = Settings(cache=capacity_text, cache_policy=policy, speculation=spec)
            seconds = best_of(lambda: sim.timed(settings), 1)
            reference = best_of(lambda: reference_run(sim, settings), 1)
            rate = n_ls / seconds
            target = "" if spec != "none" else f" -> target >= 100k: {verdict(rate >= 1e5)}"
            print(f"  {spec}/{policy}: {rate / 1e3:7.1f} k MoE-layer steps/s ({seconds:.2f} s); SimPy reference "
                  f"{n_ls / reference / 1e3:.1f} k/s ({reference / seconds:.1f}x slower){target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
