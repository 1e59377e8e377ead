"""Synthetic trace generation speed: the vectorised generator against the one it replaced, side by side.

Prints, for one Mixtral-shaped decode trace (32 MoE layers, 8 experts, top-2,
with the ``ahead`` column), rows per second of the previous per-row generator
(read from git at ``--baseline``, default the commit before the vectorised
one) and of the current one at the same size, their ratio, and then the
current generator's wall and CPU time for ``--rows`` rows (default 10M) with
and without ``ahead``. Timings on a shared machine are only comparable as
ratios within one run.

    .venv/bin/python bench/bench_synth.py            # about a minute or two on two cores
    .venv/bin/python bench/bench_synth.py --rows 1000000 --quick
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pregate.simulator.synthetic import like_trace, make_trace, synthetic_meta


def _baseline(commit: str, folder: Path):
    src = subprocess.run(["git", "show", f"{commit}:simulator/synthetic.py"], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parent.parent).stdout
    path = folder / "synthetic_baseline.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("synthetic_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _time(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="3627a8c", help="git commit of the previous generator")
    ap.add_argument("--rows", type=int, default=10_000_000, help="rows of the large run (default 10M)")
    ap.add_argument("--quick", action="store_true", help="skip the large run with ahead")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old = _baseline(args.baseline, tmp)
        seqs, tokens = 8, 64  # 16,384 rows: small enough for the old generator
        rows = seqs * tokens * 32
        meta = synthetic_meta(32, 8, 2, 3)
        t_old, _ = _time(lambda: old.make_trace(tmp / "old", seqs=seqs, prompt_len=0, new_tokens=tokens,
                                                 meta=old.synthetic_meta(32, 8, 2, 3)))
        t_new, _ = _time(lambda: make_trace(tmp / "new", seqs=seqs, prompt_len=0, new_tokens=tokens, meta=meta))
        print(f"same trace size, {rows} rows, 32x8 top-2 with ahead (make_trace):")
        print(f"  previous generator ({args.baseline}): {t_old:7.2f} s  {rows / t_old:12,.0f} rows/s")
        print(f"  vectorised generator:            {t_new:7.2f} s  {rows / t_new:12,.0f} rows/s")
        print(f"  speed-up: {t_old / t_new:.0f}x")
        tokens = 250
        seqs = max(1, args.rows // (32 * tokens))
        cases = [("no ahead", None)] + ([] if args.quick else [("with ahead (J=3)", 0.8)])
        print(f"\nmixtral-8x7b preset, {seqs} sequences x {tokens} tokens = {seqs * tokens * 32:,} rows:")
        for label, acc in cases:
            wall, cpu = _time(lambda: like_trace(tmp / "big", "mixtral-8x7b", seqs=seqs, decode_tokens=tokens,
                                                 ahead_accuracy=acc))
            target = "MET" if wall < 30 else "MISSED"
            print(f"  {label:<18} wall {wall:6.1f} s  cpu {cpu:6.1f} s  (target: 10M rows < 30 s wall: {target})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
