"""Host time of the planner per MoE layer step, by policy: what the executor pays in Python.

The executor asks the simulator's planner for every layer step, on the host,
between the router's read-back and the first expert kernel: at small batches
the GPU waits for it. This times ``Planner.plan`` alone over a synthetic
switch-base-64 stream (768 experts, batch 16), with copies landing at once as
on the CPU, for each speculation + caching pair of the GPU validation.

    python bench/bench_planner.py [--batch-size 16] [--shape switch-base-64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

PAIRS = ["none+lru", "none+lfu", "layer_minus_1+lru", "multi_layer+least-stale"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="switch-base-64")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="best of this many walks per setting")
    args = ap.parse_args(argv)

    from pregate.executor.run import trace_frame, trace_stream
    from pregate.executor.shapes import make_shape_trace
    from pregate.simulator.api import Simulation
    from pregate.simulator.cache import RESIDENT
    from pregate.simulator.settings import Settings
    from pregate.traces import open_trace

    with tempfile.TemporaryDirectory() as tmp:
        path = make_shape_trace(Path(tmp) / args.shape, args.shape, seqs=32, prompt_len=16, new_tokens=24,
                                dtype="bfloat16")
        trace = open_trace(path)
        stream = trace_stream(trace_frame(trace), trace.meta, args.batch_size, 2)
    sim = Simulation(None, Settings(batch_size=args.batch_size, dtype="bfloat16"), stream=stream)
    print(f"{args.shape}, batch {args.batch_size}: {stream.n_layer_steps} layer steps, "
          f"{stream.layout.n_objects} experts")
    for pair in PAIRS:
        spec, caching = pair.split("+")
        for cache in ("25%", "50%"):
            best = float("inf")
            for _ in range(args.rounds):
                settings = sim.settings.replace(speculation=spec, cache_policy=caching, cache=cache)
                cache_obj, planner, _, _ = sim._parts(settings)
                state = cache_obj.state
                start = time.perf_counter()
                for ls in range(stream.n_layer_steps):
                    plan = planner.plan(ls)
                    for obj in plan.prefetches:  # copies land at once, as on the CPU
                        state[obj] = RESIDENT
                    for obj, _, cached in plan.misses:
                        if cached:
                            state[obj] = RESIDENT
                best = min(best, (time.perf_counter() - start) / stream.n_layer_steps)
            print(f"  {pair:28} cache {cache:>4}: {best * 1e6:7.1f} us per layer step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
