"""Pre-gated MoE's headline comparison (Hwang et al., ISCA 2024), reproduced in pregate's simulator.

The paper runs Switch-base-8..128 and Switch-large-128 (encoder-decoder,
fp32, batch 1 with beam search of width 4) on an A100 over PCIe Gen4, in a C++
FasterTransformer fork, and compares four schemes:

* GPU-only: every expert resident (needs the memory);
* MoE-OnDemand: no expert cache; each activated expert is fetched once its
  router has run, then computed;
* MoE-Prefetch: all experts of the next MoE layer are fetched while this one
  computes (room for two layers of all experts);
* Pre-gated: the next layer's *activated* experts are copied while this layer
  computes; room for two layers' activated experts only. The paper fine-tunes
  the pre-gate, and its choice *is* the next layer's routing, so it never
  mispredicts: that is priced here as next-layer oracle prefetch. Beside it,
  the same scheme driven by the untrained signal the trace records
  (``layer_minus_1`` on ``ahead``: the next router applied to this layer's
  hidden state of a model trained without a pre-gate).

Here: routing from pregate's Switch-topology sample traces (a decoder-only
small MoE trained on two CPU cores; its prompt routing stands in for the
encoder and its generated tokens' routing for the decoder), priced as each
Switch shape in fp32 on the a100-80gb-pcie profile with the gpu-bound runtime; four sequences decoded
together stand in for four beams. The script prints pregate's figures next to
the paper's; the differences are explained in the project's notes.

Every scheme runs with ``prefetch_gate="off"``: the paper's schemes issue every
copy they name, where pregate's default cost gate would drop the copies it
expects not to pay (and so turn MoE-Prefetch and Pre-gated into OnDemand).

The two schemes the simulator has no policy for (next-layer oracle, next
layer's every expert) are registered here: they exist for this comparison.

usage:
  .venv/bin/python bench/paper_pregated.py                       # switch-base-8 and -64, both samples
  .venv/bin/python bench/paper_pregated.py --shapes switch-base-8 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl

from pregate.simulator.api import Simulation
from pregate.simulator.policies.registry import SPECULATION
from pregate.simulator.policies.speculation import Oracle, SpeculationPolicy
from pregate.simulator.profile import load_profile
from pregate.simulator.settings import Settings
from pregate.simulator.stream import build_stream
from pregate.simulator.sweep import SweepError, sample_trace, sample_trace_path
from pregate.traces import StackMeta, open_trace

PROFILE = "a100-80gb-pcie"
# the paper's runtime is a C++ FasterTransformer fork: close to no host cost per kernel
RUNTIME = "gpu-bound"
BEAMS = 4
# The paper's headline figures (ISCA'24 abstract and evaluation, as collected in ARCHITECTURE.md).
PAPER = {
    "moe_vs_ondemand": "1.7x faster on average (up to 1.9x)",
    "moe_vs_gpu_only": "19% slower",
    "moe_vs_prefetch": "42x faster",
    "e2e_vs_gpu_only": "81% of GPU-only",
    "e2e_vs_ondemand": "1.5x",
    "memory_vs_gpu_only": "23% of GPU-only",
}
SAMPLES = {8: "pregate-moe-tiny", 64: "pregate-moe-tiny-64"}


if "next_layer_oracle" not in SPECULATION.names():
    @SPECULATION.register("next_layer_oracle")
    class NextLayerOracle(Oracle):
        """Pre-gated MoE with its fine-tuned pre-gate: exactly the next layer's activated experts."""

        def __init__(self, layout=None, seed: int = 0):
            super().__init__(layout, seed, depth=1)

    @SPECULATION.register("next_layer_all")
    class NextLayerAll(SpeculationPolicy):
        """MoE-Prefetch: every expert of the next MoE layer, whatever the router will choose."""

        def predict(self, view):
            if view.remaining < 1:
                return []
            nxt = view.layer + 1
            base, count = int(self.layout.base[nxt]), int(self.layout.experts[nxt])
            return list(range(base, base + count))


def shared_beams(frame: pl.DataFrame, beams: int) -> pl.DataFrame:
    """Each sequence as ``beams`` identical beams: the encoder once, the decoder rows ``beams`` times.

    The other extreme from four independent sequences: real beams of one prompt share the prompt and
    often, not always, the experts of their next tokens.
    """
    enc = frame.filter(pl.col("stack") == "encoder").with_columns(pl.col("seq") * beams)
    dec = frame.filter(pl.col("stack") == "decoder")
    copies = [dec.with_columns(pl.col("seq") * beams + b) for b in range(beams)]
    return pl.concat([enc, *copies])


def encoder_decoder_stream(trace_path: Path, batch_size: int, shared: bool = False):
    """The decoder-only sample as an encoder-decoder trace: prompt routing -> encoder, generated -> decoder."""
    trace = open_trace(trace_path)
    meta = trace.meta
    dec = meta.stacks["decoder"]
    columns = ["seq", "stack", "step", "phase", "pos", "layer", "experts", "dropped", "probs", "ahead", "ahead_probs"]
    frame = trace.scan().select(columns).collect()
    enc = frame.filter(pl.col("phase") == "prefill").with_columns(pl.lit("encoder").alias("stack"))
    frame = pl.concat([enc, frame.filter(pl.col("phase") == "decode")])
    if shared:
        frame = shared_beams(frame, batch_size)
    blocks = list(range(1, 2 * dec.moe_layers, 2))
    stacks = {"encoder": StackMeta(dec.moe_layers, dec.experts, dec.top_k, blocks),
              "decoder": StackMeta(dec.moe_layers, dec.experts, dec.top_k, blocks)}
    meta = replace(meta, stacks=stacks)
    return build_stream(frame, meta=meta, batch_size=batch_size), meta


def synthetic_stream(experts: int, batch_size: int, folder: Path, shared: bool = False):
    from pregate.simulator.synthetic import make_trace

    if not folder.is_dir():
        make_trace(folder, seqs=32, prompt_len=24, new_tokens=32, layers=6, experts=experts, top_k=1,
                   encoder_layers=6, seed=0)
    trace = open_trace(folder)
    if not shared:
        return build_stream(trace, batch_size=batch_size), trace.meta
    frame = trace.scan().collect()
    return build_stream(shared_beams(frame, batch_size), meta=trace.meta, batch_size=batch_size), trace.meta


def schemes(experts: int) -> dict[str, dict]:
    return {
        "GPU-only": dict(buffering="resident"),
        "MoE-OnDemand": dict(speculation="none", buffering="double_buffer"),
        "MoE-Prefetch": dict(speculation="next_layer_all", buffering="cache", cache=str(2 * experts)),
        "Pre-gated (fine-tuned gate = oracle)": dict(speculation="next_layer_oracle", buffering="double_buffer"),
        "Pre-gated (untrained signal)": dict(speculation="layer_minus_1", buffering="double_buffer"),
    }


def moe_block_ms(sim: Simulation, steps) -> float:
    """Mean MoE-block time per MoE layer in decode steps, derived: step latency minus its dense work.

    The dense part of a layer step is the longer of its GPU time and its host issue, plus the router's
    read-back; it is the same in every scheme, so the differences between schemes are all in the MoE blocks.
    """
    costs, stream = sim.costs, sim.stream
    start = stream.pass_ls_start
    values = []
    for s in steps:
        if not s.decode:
            continue
        lo, hi = int(start[s.pass_index]), int(start[s.pass_index + 1])
        dense = sum(max(costs.dense_gpu[ls], costs.dense_host[ls]) + costs.router_sync for ls in range(lo, hi))
        values.append((s.latency_s - dense) / (hi - lo))
    return float(np.mean(values)) * 1e3


def run_shape(shape: str, stream, routing: str, profile, beams: str) -> list[dict]:
    experts = int(stream.layout.experts[0])
    rows = []
    for name, extra in schemes(experts).items():
        # The paper's schemes copy what they name, unconditionally: no cost gate in front of them.
        settings = Settings(profile=PROFILE, runtime=RUNTIME, dtype="float32", price_as=shape, batch_size=BEAMS,
                            prefetch_gate="off", **extra)
        sim = Simulation(None, settings, profile=profile, stream=stream)
        outcome, cache = sim.timed(settings)
        summary = sim.summarise(settings, outcome, cache)
        tokens = sum(s.tokens for s in outcome.steps if s.decode)
        rows.append({
            "shape": shape, "beams": beams, "routing": routing, "scheme": name, "pricing": summary["pricing"],
            "moe_block_ms": moe_block_ms(sim, outcome.steps),
            "step_ms": summary["mean_step_latency_s"] * 1e3,
            "tokens_per_s_end_to_end": tokens / outcome.total_s,
            "peak_gpu_gb": summary["peak_gpu_bytes"] / 1e9,
            "hit_rate": (summary["hits"] + summary["late_hits"]) / summary["requests"],
            "stall_share": summary["stall_share"],
            "gb_moved": summary["bytes_moved"] / 1e9,
        })
    return rows


def ratios(rows: list[dict]) -> dict[str, float]:
    by = {r["scheme"]: r for r in rows}
    gpu, od, pf = by["GPU-only"], by["MoE-OnDemand"], by["MoE-Prefetch"]
    out = {}
    for label, key in (("oracle", "Pre-gated (fine-tuned gate = oracle)"), ("untrained", "Pre-gated (untrained signal)")):
        pg = by[key]
        out[f"{label}:moe_vs_ondemand"] = od["moe_block_ms"] / pg["moe_block_ms"]
        out[f"{label}:moe_vs_gpu_only"] = pg["moe_block_ms"] / gpu["moe_block_ms"] - 1.0
        out[f"{label}:moe_vs_prefetch"] = pf["moe_block_ms"] / pg["moe_block_ms"]
        out[f"{label}:e2e_vs_gpu_only"] = pg["tokens_per_s_end_to_end"] / gpu["tokens_per_s_end_to_end"]
        out[f"{label}:e2e_vs_ondemand"] = pg["tokens_per_s_end_to_end"] / od["tokens_per_s_end_to_end"]
        out[f"{label}:memory_vs_gpu_only"] = pg["peak_gpu_gb"] / gpu["peak_gpu_gb"]
    return out


def _fmt(key: str, value: float) -> str:
    kind = key.split(":")[1]
    if kind in ("moe_vs_ondemand", "moe_vs_prefetch", "e2e_vs_ondemand"):
        return f"{value:.2f}x faster" if kind != "e2e_vs_ondemand" else f"{value:.2f}x"
    if kind == "moe_vs_gpu_only":
        return f"{value:+.0%} ({'slower' if value >= 0 else 'faster'})"
    return f"{value:.0%} of GPU-only"


LABELS = {
    "moe_vs_ondemand": "MoE block: Pre-gated vs OnDemand",
    "moe_vs_gpu_only": "MoE block: Pre-gated vs GPU-only",
    "moe_vs_prefetch": "MoE block: Pre-gated vs Prefetch",
    "e2e_vs_gpu_only": "end-to-end throughput vs GPU-only",
    "e2e_vs_ondemand": "end-to-end throughput vs OnDemand",
    "memory_vs_gpu_only": "peak GPU memory vs GPU-only",
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="switch-base-8,switch-base-64",
                        help="Switch shapes to price the routing as (default: switch-base-8,switch-base-64)")
    parser.add_argument("--json", metavar="OUT", help="write every row and ratio as JSON")
    parser.add_argument("--work", default="runs/paper-pregated", help="folder for a synthetic fallback trace")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    profile = load_profile(PROFILE)
    all_rows, table = [], {}
    for shape in [s.strip() for s in args.shapes.split(",") if s.strip()]:
        experts = int(shape.rsplit("-", 1)[1])
        sample = SAMPLES.get(experts)
        try:
            path = sample_trace(sample) if sample else None
        except SweepError:
            path = None
        if path is None:
            where = sample_trace_path(sample) if sample else "no sample of this topology"
            print(f"note: no Switch-topology sample with {experts} experts ({where}); SYNTHETIC routing for {shape}",
                  file=sys.stderr)
        for beams, shared in (("4 sequences", False), ("1 sequence x 4 identical beams", True)):
            if path is not None:
                stream, meta = encoder_decoder_stream(path, BEAMS, shared)
                routing = f"sample {sample} (prompt -> encoder, generated -> decoder)"
            else:
                stream, meta = synthetic_stream(experts, BEAMS, Path(args.work) / f"synthetic-{experts}", shared)
                routing = "SYNTHETIC"
            rows = run_shape(shape, stream, routing, profile, beams)
            all_rows += rows
            table[(shape, beams)] = ratios(rows)
    frame = pl.DataFrame(all_rows)
    print(f"Pre-gated MoE's comparison on {PROFILE} with the {RUNTIME} runtime (fp32, {BEAMS} decode rows per step; "
          f"derived from simulation, {time.perf_counter() - started:.0f} s)\n")
    with pl.Config(tbl_rows=50, tbl_cols=20, tbl_width_chars=200, fmt_str_lengths=40, tbl_hide_dataframe_shape=True,
                   float_precision=3):
        print(frame.select("shape", "beams", "scheme", "moe_block_ms", "step_ms", "tokens_per_s_end_to_end", "peak_gpu_gb",
                           "hit_rate", "stall_share", "gb_moved"))
    cols = list(table)
    header = (["figure", "paper"] + [f"{s}, {b} (oracle gate)" for s, b in cols]
              + [f"{s}, {b} (untrained signal)" for s, b in cols if b == "4 sequences"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for kind, label in LABELS.items():
        cells = [label, PAPER[kind]]
        cells += [_fmt(f"oracle:{kind}", table[c][f"oracle:{kind}"]) for c in cols]
        cells += [_fmt(f"untrained:{kind}", table[c][f"untrained:{kind}"]) for c in cols if c[1] == "4 sequences"]
        lines.append("| " + " | ".join(cells) + " |")
    print("\n" + "\n".join(lines))
    print("\nrouting: " + "; ".join(dict.fromkeys(f"{r['shape']}: {r['routing']}" for r in all_rows)))
    if args.json:
        ratios_out = {f"{s} / {b}": v for (s, b), v in table.items()}
        Path(args.json).write_text(json.dumps({"rows": all_rows, "ratios": ratios_out, "paper": PAPER}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
