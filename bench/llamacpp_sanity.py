"""A published measurement as a sanity check of the host side of the cost model.

The measurement (a llama.cpp maintainer's, quoted in llama.cpp's issue tracker):
Mixtral-8x7B q4_K_M on an RTX 3090, 28 of its 32 layers on the GPU, decoding
one sequence at about 24 tokens/s. The host was a desktop; we price it as
``ddr4-3200-2ch`` (dual-channel DDR4-3200, 8 AVX2 cores), the usual pairing
of that GPU, and say so: the publication does not name the memory.

What pregate simulates: a Mixtral-shaped synthetic trace (``pregate synth
--like mixtral-8x7b``), priced with the ``static-layers`` placement at a cache
of 28 x 8 experts, so the experts of the last 28 MoE layers are resident on
the GPU and those of the first 4 run on the CPU (llama.cpp's ``--n-cpu-moe
4``), at batch 1. Routing does not matter here: at batch 1 every layer step
runs two experts wherever they live.

About 4.5 bits per weight is modelled by ``--dtype int4``: the experts and the
dense weights are held group-quantised on the GPU and on the host (4 bits a
weight plus one fp16 scale per 64 weights = 4.25 bits a weight; expert bytes
``params // 2 + (params // 64) * 2`` from traces/schema.py), and the kernels
read those bytes. q4_K_M averages about 4.5-4.8 bits a weight (it keeps some
tensors at q6_K), so pregate reads 6-12% fewer bytes than llama.cpp does.

Printed with two runtime profiles: ``pregate-eager`` (pregate's executor:
eager PyTorch, one Python issue per kernel) and ``gpu-bound`` (no host issue
cost: what fused kernels or graphs approach; llama.cpp's CUDA backend is
closer to this one). Next to the simulation, a hand computation from the same
cost tables (the sum of the per-layer-step terms at one token), so a reader
can see where the time goes.

    python bench/llamacpp_sanity.py            # writes bench/results/llamacpp-sanity.txt
    python bench/llamacpp_sanity.py --out -    # print only
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

PUBLISHED_TPS = 24.0
PUBLISHED = ("about 24 tokens/s: llama.cpp maintainer's measurement, Mixtral-8x7B q4_K_M, RTX 3090, "
             "28/32 layers on GPU, batch 1 (quoted in llama.cpp's issue tracker)")
PROFILE, HOST, DTYPE = "rtx3090", "ddr4-3200-2ch", "int4"
CPU_LAYERS = 4
RUNTIMES = ("pregate-eager", "gpu-bound")


def hand_step(sim, cpu_layers: int) -> dict:
    """The decode step at one token, summed from the cost terms: what each part costs.

    Per MoE layer step: dense work (the larger of its GPU time and its issue),
    the router's read-back, the planner; then two experts, on the GPU (the
    larger of GPU time and issue) or on the CPU (the CPU term: weights streamed
    once, activations both ways, dispatch). No overlap between them is
    assumed, which is how a batch-1 decode runs: each layer waits for the last.
    """
    c = sim.costs
    layers = sim.stream.layout.n_layers
    top_k = 2
    dense = float(max(c.dense_gpu[0], c.dense_host[0])) + c.router_sync + c.layer_step
    gpu_expert = max(c.expert_gpu[1], c.expert_host)
    cpu_expert = c.expert_cpu[1]
    parts = {"dense and router": layers * dense, "GPU experts": (layers - cpu_layers) * top_k * gpu_expert,
             "CPU experts": cpu_layers * top_k * cpu_expert}
    parts["step"] = sum(parts.values())
    return parts


def run(out: str) -> str:
    from pregate.simulator import Settings, Simulation
    from pregate.simulator.synthetic import like_trace

    lines = []
    with tempfile.TemporaryDirectory(prefix="pregate-sanity-") as tmp:
        trace = like_trace(Path(tmp) / "mixtral", "mixtral-8x7b", seqs=2, decode_tokens=32)
        experts = 8
        cache = (32 - CPU_LAYERS) * experts
        lines += [
            "Sanity check: Mixtral-8x7B at ~4.5 bits/weight, RTX 3090, dual-channel DDR4-3200 host, "
            f"{32 - CPU_LAYERS} of 32 layers' experts on the GPU ({CPU_LAYERS} on the CPU), batch 1",
            f"command: python bench/llamacpp_sanity.py   ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)",
            f"published: {PUBLISHED}",
            f"pregate: pregate simulate TRACE --profile {PROFILE} --host {HOST} --dtype {DTYPE} "
            f"--buffering static-layers --cache {cache} --runtime RUNTIME "
            "(TRACE: pregate synth --like mixtral-8x7b --seqs 2 --tokens 32)",
            "",
            f"{'runtime':<15} {'simulated tok/s':>15} {'hand tok/s':>10} {'vs 24 tok/s':>11}  "
            "where a step's time goes (hand computation, ms)",
        ]
        for runtime in RUNTIMES:
            settings = Settings(profile=PROFILE, host=HOST, dtype=DTYPE, buffering="static-layers",
                                cache=str(cache), runtime=runtime)
            sim = Simulation(trace, settings)
            summary = sim.run(bounds=False).summary
            tps = summary["tokens_per_s"]
            hand = hand_step(sim, CPU_LAYERS)
            parts = ", ".join(f"{k} {v * 1e3:.1f}" for k, v in hand.items())
            lines.append(f"{runtime:<15} {tps:>15.1f} {1 / hand['step']:>10.1f} {tps / PUBLISHED_TPS:>10.2f}x  "
                         f"{parts}")
            lines.append(f"{'':<15} moved after warm-up: {summary['bytes_moved'] / 1e6:.1f} MB; "
                         f"CPU-run experts: {summary['misses']} of {summary['requests']} requests; "
                         f"host {summary['host']}")
        c = sim.costs
        lines += [
            "",
            f"cost terms (one token): GPU expert {c.expert_gpu[1] * 1e3:.3f} ms "
            f"({c.expert_bytes[DTYPE] / 1e6:.1f} MB at int4 / 936 GB/s), "
            f"CPU expert {c.expert_cpu[1] * 1e3:.3f} ms ({c.expert_bytes[DTYPE] / 1e6:.1f} MB / 40 GB/s "
            "streaming read + activations both ways + dispatch)",
            "",
            "Why they differ: pregate models no llama.cpp kernels. Its GPU and CPU expert times are rooflines "
            "(bytes / bandwidth) plus estimated dispatch, so they are lower bounds on what real kernels reach; "
            "llama.cpp's q4_K dequantising matmuls reach well below peak bandwidth at batch 1, its CPU "
            "threads do not stream at the full 40 GB/s, q4_K_M reads 6-12% more bytes than pregate's int4, "
            "and the 24 tokens/s host's memory is not published (DDR4-3200 dual channel assumed). Within 2x "
            "is the expectation, not a target.",
        ]
    text = "\n".join(lines) + "\n"
    if out != "-":
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "llamacpp-sanity.txt"),
                        help="file to write (default: bench/results/llamacpp-sanity.txt; - prints only)")
    args = parser.parse_args(argv)
    print(run(args.out), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
