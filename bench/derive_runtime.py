"""Derive the ``pregate-eager`` runtime profile from a GPU validation record.

Why from the record's points and not only from its calibration: calibrate fits
the executor's host costs on one tiny model shape, and applied to other shapes
those fits miss (a dense block with an FFN took 270-320 us to issue on the H200
host against the 236 us of the tiny attention-only block). The record holds,
for every point, the executor's host time per phase inside its run loop at the
real shapes; this script turns them into per-kernel, per-block, per-expert and
per-policy costs, each a derived value whose source gives the formula, the
inputs and a low-high range (10th to 90th percentile of the per-point values).

    python bench/derive_runtime.py bench/results/gpu-validate-nvidia-h200.json \\
        -o simulator/runtimes/pregate-eager.toml

The same record gives the same file byte for byte (tests check the shipped one).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

# Operations the executor's functions dispatch (counted with a TorchDispatchMode on the CPU,
# views excluded; on CUDA each is one kernel): see tests/test_runtime_profiles.py, which counts again.
KERNELS = {
    "dense_block": (14, "RMS norm (5: pow, mean, add, rsqrt, mul), QKV matmul, attention, output matmul, "
                        "residual add, RMS norm (5)"),
    "dense_ffn": (9, "RMS norm (5), two matmuls, activation, residual add"),
    "expert": (6, "gather, two matmuls, activation, gate product, scatter-add"),
    "gated_expert": (7, "gather, gate-up matmul, SiLU, product, down matmul, gate product, scatter-add (the split "
                        "is a view)"),
}
BLOCKS_PER_LAYER = {"switch-base-8": 2, "switch-base-64": 2, "mixtral-like": 1}
HOST_SHAPES = ("switch-base-8", "switch-base-64")  # host-bound shapes: the phases are the host's alone


def _range(samples) -> tuple[float, float, float]:
    a = np.asarray(samples, float)
    return float(np.median(a)), float(np.percentile(a, 10)), float(np.percentile(a, 90))


def _v(value, low, high, source, unit="s"):
    from pregate.simulator.provenance import Value

    value, low, high = (float(f"{x:.4g}") for x in (value, low, high))
    low, high = min(low, value), max(high, value)
    return Value(value, unit, "derived", source, max(low, 0.0), high)


def derive(record: dict, where: str):
    """The runtime profile of pregate's executor implied by the record's in-loop host times."""
    from pregate.simulator.provenance import Value
    from pregate.simulator.runtime import RuntimeProfile

    cal = record["calibration"]
    tag = f"{record['gpu']} host, {cal['environment']['date']} ({where})"
    tiny_block = cal["executor_overheads"]["block_issue"]
    points = [p for p in record["points"] + record["resident_points"] if p["trace"] in HOST_SHAPES]
    dense = [p["measured_host_dense_s"] / (p["layer_steps_per_step"] * BLOCKS_PER_LAYER[p["trace"]]) for p in points]
    k_att, k_ffn = KERNELS["dense_block"][0], KERNELS["dense_ffn"][0]
    per_kernel = [(d - tiny_block) / k_ffn for d in dense]
    pk, pk_lo, pk_hi = _range(per_kernel)
    pb = tiny_block - k_att * pk
    e: dict[str, Value] = {}
    e["host.per_kernel"] = _v(pk, pk_lo, pk_hi, f"derived from {tag}: (dense block issue in the run loop at the "
                              f"switch shapes ({k_att + k_ffn} kernels; median {np.median(dense) * 1e6:.0f} us over "
                              f"{len(dense)} points) - calibrate's attention-only block ({k_att} kernels, "
                              f"{tiny_block * 1e6:.0f} us)) / {k_ffn} kernels; range: 10th-90th percentile of points")
    e["host.per_block"] = _v(pb, tiny_block - k_att * pk_hi, tiny_block - k_att * pk_lo,
                             f"derived from {tag}: calibrate's attention-only block issue {tiny_block * 1e6:.0f} us "
                             f"- {k_att} kernels x host.per_kernel; range from host.per_kernel's")
    offl = [p for p in points if p["cache"] != "resident"]
    res = [p for p in points if p["cache"] == "resident"]
    k_exp = KERNELS["expert"][0]
    per_exp = [p["measured_host_expert_s"] / p["experts_per_step"] - k_exp * pk for p in offl]
    per_res = [p["measured_host_expert_s"] / p["experts_per_step"] - k_exp * pk for p in res]
    e["host.per_expert"] = _v(*_range(per_exp), f"derived from {tag}: expert phase per expert in the run loop at "
                              f"the switch shapes ({len(offl)} offloaded points) - {k_exp} kernels x host.per_kernel")
    e["host.per_resident_expert"] = _v(*_range(per_res), f"derived from {tag}: the same over the {len(res)} "
                                       "all-resident points (no slot events)")
    route = [p["measured_host_route_s"] / p["layer_steps_per_step"] for p in points]
    e["host.router_sync"] = _v(*_range(route), f"derived from {tag}: router phase per layer step in the run loop "
                               "(router kernels and the read-back of its choice) at the switch shapes")
    res_plan = [p["measured_host_plan_s"] / p["layer_steps_per_step"] for p in res]
    # planner: per caching policy, plan phase per step = a x layer steps + b x copies (least squares)
    fits = {}
    for policy in sorted({p["cache_policy"] for p in record["points"]}):
        pts = [p for p in record["points"] if p["cache_policy"] == policy and p["trace"] in HOST_SHAPES]
        ls = np.array([p["layer_steps_per_step"] for p in pts], float)
        share = np.array([(p["measured_misses"] + p["measured_prefetches"])
                          / max(1, p["measured_hits"] + p["measured_misses"]) for p in pts])
        copies = share * np.array([p["experts_per_step"] for p in pts])  # copies per step, from the run's counts
        y = np.array([p["measured_host_plan_s"] for p in pts])
        (a, b), *_ = np.linalg.lstsq(np.stack([ls, copies], 1), y, rcond=None)
        a, b = max(float(a), 1e-7), max(float(b), 0.0)
        implied = (y - b * copies) / ls
        fits[policy] = (a, b, implied, len(pts))
    a_all = [x for f in fits.values() for x in f[2]]
    base = fits.get("lru", next(iter(fits.values())))
    e["host.layer_step"] = _v(base[0], min(a_all), max(a_all), f"derived from {tag}: planner phase of the lru points "
                              "at the switch shapes fitted to a x layer steps + b x copies; range: the per-point "
                              "values of every policy")
    e["host.resident_layer_step"] = _v(*_range(res_plan), f"derived from {tag}: the loop's layer-step bookkeeping "
                                       "with every expert resident (no planner), per layer step")
    e["host.copy_issue"] = _v(base[1], 0.5 * base[1], 2.0 * base[1], f"derived from {tag}: b of the lru fit "
                              "(host time per copy issued); range x0.5 to x2 (a fit's slope over few points)")
    for policy, (a, b, implied, n) in fits.items():
        _, lo, hi = _range(implied)
        e[f"planner.{policy}_layer_step"] = _v(a, lo, hi, f"derived from {tag}: {policy} points at the switch "
                                               f"shapes ({n}), plan phase fitted to a x layer steps + b x copies; "
                                               "range: 10th-90th percentile of per-point values")
        e[f"planner.{policy}_copy_issue"] = _v(b, 0.5 * b, 2.0 * b, f"derived from {tag}: b of the same fit; range "
                                               "x0.5 to x2")
    for key, (count, what) in KERNELS.items():
        e[f"kernels.{key}"] = Value(float(count), "count", "measured",
                                    f"measured: torch operations the executor's code dispatches, counted (views "
                                    f"excluded; one kernel each on CUDA): {what}", float(count), float(count))
    hbm = next(v["value"] for k, v in cal["values"].items() if k == "gpu.hbm_bandwidth")
    for form, rate in sorted(cal["dequant_Bps"].items()):
        ratio = rate / hbm
        e[f"dequant.{form}"] = _v(ratio, 0.5 * ratio, 1.5 * ratio,
                                  f"derived from {tag}: {form} dequantisation measured at {rate / 1e9:.1f} GB/s / "
                                  f"HBM {hbm / 1e12:.2f} TB/s; carried to another GPU as a share of its HBM (the "
                                  "eager dequantisation is a chain of memory-bound elementwise kernels); range "
                                  "x0.5 to x1.5 for that assumption", unit="ratio")
    rule = (f"host values were measured on the {record['gpu']} machine's host (16 vCPUs in a Firecracker VM); on "
            "another host CPU multiply every [host] and [planner] value by r = (host.block_issue that pregate "
            f"calibrate measures on that host) / {tiny_block * 1e6:.1f} us, the same measurement on this one (host "
            "time of Python and kernel launches scales with single-thread speed); the ranges cover r within about "
            "0.7-1.4 of 1 without measuring")
    return RuntimeProfile(
        "pregate-eager", "pregate's executor (eager PyTorch, one Python thread issuing every kernel, the planner "
        "between the router and the experts), from the in-loop host times of the H200 validation record",
        e, "all-at-once", rule, (), where)


def main(argv=None) -> int:
    from pregate.simulator.runtime import render_runtime

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("record", help="a gpu-validate-<gpu>.json written by bench/gpu_validate.sh")
    ap.add_argument("-o", "--out", help="runtime TOML to write (default: print)")
    args = ap.parse_args(argv)
    record = json.loads(Path(args.record).read_text())
    where = Path(args.record).as_posix().split("bench/", 1)[-1]
    text = render_runtime(derive(record, "bench/" + where if not where.startswith("bench/") else where),
                          header=f"Written by bench/derive_runtime.py from bench/{where}; do not edit by hand.")
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
