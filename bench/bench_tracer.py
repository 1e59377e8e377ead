"""Tracer overhead and trace size, measured side by side in one run.

    python bench/bench_tracer.py [--model google/switch-base-8] [--rounds 7] [--json bench/results/tracer.json]

Overhead: the same random-init model and inputs go through plain greedy
``generate`` and through the tracer (hooks, the ``ahead`` router calls, row
building and writing the Parquet part), alternating plain/traced each round so
that machine noise hits both sides alike. The ratio is of the medians.
Target: traced / plain <= 1.05.

Size: a trace of all built-in prompts; bytes on disk per row. Target: < 8.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from pregate.traces import TraceWriter
from pregate.traces.info import describe
from pregate.tracer.inputs import read_prompts, tokenize
from pregate.tracer.models import build_random
from pregate.tracer.run import BatchTracer, TraceSettings, make_meta, trace


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="google/switch-base-8")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    loaded = build_random(args.model, seed=0)
    prompts = read_prompts("builtin", limit=args.batch_size)
    settings = TraceSettings(model=args.model, out=Path("unused"), max_new_tokens=args.max_new_tokens,
                             batch_size=args.batch_size, progress=False)
    meta = make_meta(loaded, settings, prompts, "utf8-bytes+3")
    tracer = BatchTracer(loaded, settings, meta)
    ids = tokenize(prompts, None, loaded.model.config.vocab_size, tracer.eos, settings.max_prompt_tokens)
    input_ids, mask = tracer.pad_batch(ids)

    plain, traced = [], []
    with tempfile.TemporaryDirectory() as tmp:
        writer = TraceWriter(Path(tmp) / "t", meta)
        tracer.generate(input_ids, mask)  # warm-up: allocator, kernels
        for round_ in range(args.rounds):
            start = time.perf_counter()
            tracer.generate(input_ids, mask)
            plain.append(time.perf_counter() - start)
            start = time.perf_counter()
            table, _ = tracer.run(0, ids)
            writer.write(round_, table)
            traced.append(time.perf_counter() - start)
            print(f"round {round_}: plain {plain[-1]:.3f} s, traced {traced[-1]:.3f} s", file=sys.stderr)

        size_dir = Path(tmp) / "size"
        trace(TraceSettings(model=args.model, out=size_dir, max_new_tokens=32, batch_size=8, progress=False),
              loaded=loaded)
        info = describe(size_dir)

    ratio = statistics.median(traced) / statistics.median(plain)
    result = {
        "model": args.model,
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "rounds": args.rounds,
        "plain_median_s": statistics.median(plain),
        "traced_median_s": statistics.median(traced),
        "plain_min_s": min(plain),
        "traced_min_s": min(traced),
        "overhead_ratio_median": ratio,
        "overhead_ratio_min": min(traced) / min(plain),
        "size_rows": info["rows"],
        "size_bytes": info["size_bytes"],
        "bytes_per_row": info["bytes_per_row"],
    }
    print(f"tracer overhead ({args.model}, batch {args.batch_size}, {args.max_new_tokens} new tokens, "
          f"{args.rounds} interleaved rounds)")
    print(f"  plain generate   median {result['plain_median_s']:.3f} s   min {result['plain_min_s']:.3f} s")
    print(f"  traced           median {result['traced_median_s']:.3f} s   min {result['traced_min_s']:.3f} s")
    print(f"  ratio traced/plain: median {ratio:.3f}x, min {result['overhead_ratio_min']:.3f}x "
          f"(target <= 1.05x: {'met' if ratio <= 1.05 else 'MISSED'})")
    print(f"trace size: {info['rows']} rows, {info['size_bytes']} bytes, {info['bytes_per_row']} bytes/row "
          f"(target < 8: {'met' if info['bytes_per_row'] < 8 else 'MISSED'})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
