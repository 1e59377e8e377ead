"""The last steps of bench/gpu_validate.sh: resident executor vs HF generate, and the summary file.

Times greedy generation of one random-init Switch model two ways on the same
prompts: Hugging Face ``generate`` with every weight on the device, and the
executor with all experts resident in its slots (``--buffering resident``).
The ratio executor / HF per decode step is the "no slower than HF" target.
Then it gathers the calibrated profile and the validation points into
``gpu-validate-<gpu>.json`` and prints a short table.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import time
from pathlib import Path

import torch


def _steps(model, fn, device):
    """Wall seconds per decode forward of ``fn()`` (generate), counted with a forward hook."""
    calls = [0]
    handle = model.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    try:
        fn()  # warm-up
        best = float("inf")
        for _ in range(3):  # best of three: robust to other load on the machine
            calls[0] = 0
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, (time.perf_counter() - t) / max(1, calls[0]))
        return best
    finally:
        handle.remove()


def resident_vs_hf(device: str, batches: list[int], quick: bool) -> dict:
    from pregate.executor.run import OffloadedModel, _pad, load, prompt_ids
    from pregate.simulator.settings import Settings

    overrides = dict(vocab_size=512, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=8, num_decoder_layers=8,
                     num_sparse_encoder_layers=4, num_sparse_decoder_layers=4) if quick else None
    dtype = "bfloat16" if device == "cuda" else "float32"
    new = 8 if quick else 32
    base = load("google/switch-base-8", True, "float32", 0, overrides)
    base.model.to(getattr(torch, dtype))
    out = {"model": "google/switch-base-8 (random init)" + (" small config" if quick else ""), "dtype": dtype,
           "max_new_tokens": new}
    for batch in batches:
        hf = copy.deepcopy(base)
        hf.model.to(device)
        ids = prompt_ids(hf, limit=batch, max_tokens=32)
        ids = (ids * batch)[:batch]
        input_ids, mask = _pad(hf, ids, device)
        kw = dict(input_ids=input_ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                  num_beams=1, use_cache=True)
        hf_s = _steps(hf.model, lambda: hf.model.generate(**kw), device)
        del hf
        ex = OffloadedModel(copy.deepcopy(base), Settings(buffering="resident", batch_size=batch), device=device)
        ex._timing = False
        ex_s = _steps(ex.loaded.model, lambda: ex.loaded.model.generate(**kw), device)
        out[f"b{batch}"] = {"hf_step_s": hf_s, "executor_resident_step_s": ex_s, "ratio": ex_s / hf_s}
        del ex
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="gpu-out")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(1)  # as the pregate commands do on the cpu: stable timings on shared cores
    out = Path(args.out)
    batches = [int(b) for b in args.batches.split(",")]
    from pregate.executor.calibrate import environment
    from pregate.executor.device import Device

    env = environment(Device(args.device))
    try:
        hf = resident_vs_hf(args.device, batches, args.quick)
    except Exception as exc:  # keep the validation results even if this part fails
        import traceback

        traceback.print_exc()
        hf = {"error": f"{type(exc).__name__}: {exc}"}
    vpath = out / "validate" / "validation.json"
    validation = json.loads(vpath.read_text()) if vpath.exists() else {
        "summary": {"median_abs_error": None, "p95_abs_error": None, "kendall_tau": None, "counts_agree": None},
        "points": [], "resident": []}
    s = validation["summary"]
    big = max(batches)
    ratios = [hf[f"b{b}"]["ratio"] for b in batches if f"b{b}" in hf]
    summary = {
        "median_abs_error": s["median_abs_error"],
        "p95_abs_error": s["p95_abs_error"],
        "kendall_tau": s["kendall_tau"],
        "counts_agree": s["counts_agree"],
        "resident_vs_hf_ratio": max(ratios) if ratios else None,
        f"best_offload_vs_resident_ratio_b{big}": s.get(f"best_offload_vs_resident_ratio_b{big}"),
        "best_offload_vs_resident_ratio_b16": s.get("best_offload_vs_resident_ratio_b16"),
        "best_offload_vs_resident_ratio_b16_by_trace": s.get("best_offload_vs_resident_ratio_b16_by_trace"),
        "targets": {"median_abs_error": "<= 0.05", "p95_abs_error": "<= 0.15", "kendall_tau": ">= 0.9",
                    "resident_vs_hf_ratio": "<= 1.0", "best_offload_vs_resident_ratio_b16": "<= 1.3"},
    }
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", env["device"]).strip("-").lower()
    record = {
        "gpu": env["device"], "driver": env.get("driver"), "cuda": env.get("cuda"), "torch": env["torch"],
        "transformers": env["transformers"], "date": env["date"], "summary": summary,
        "resident_vs_hf": hf,
        "profile_toml": (out / "profile.toml").read_text() if (out / "profile.toml").exists() else None,
        "runtime_toml": (out / "profile.runtime.toml").read_text() if (out / "profile.runtime.toml").exists() else None,
        "calibration": json.loads((out / "profile.calibration.json").read_text())
        if (out / "profile.calibration.json").exists() else None,
        "points": validation["points"], "resident_points": validation["resident"],
        "kendall_tau_by_trace_and_batch": s.get("kendall_tau_by_trace_and_batch"),
        "skipped_points": validation.get("skipped", []),
        # how the synthetic traces were built (bench/resimulate.py rebuilds them from this)
        "traces": json.loads((out / "traces.json").read_text()) if (out / "traces.json").exists() else None,
    }
    path = out / f"gpu-validate-{gpu}.json"
    path.write_text(json.dumps(record, indent=2, default=float) + "\n")

    def ms(x):
        return f"{x * 1e3:9.3f}"

    print(f"\n{'trace':16} {'b':>3} {'policy':28} {'cache':>6} {'meas ms':>9} {'sim ms':>9} {'err':>7} {'KS':>5}")
    for p_ in validation["resident"] + validation["points"]:
        policy = "resident" if p_["cache"] == "resident" else f"{p_['speculation']}+{p_['cache_policy']}"
        print(f"{p_['trace'][:16]:16} {p_['batch_size']:>3} {policy[:28]:28} {p_['cache']:>6} "
              f"{ms(p_['measured_mean_s'])} {ms(p_['simulated_mean_s'])} {p_['rel_error_mean']:+7.1%} {p_['ks']:5.2f}")
    for b in batches:
        if f"b{b}" not in hf:
            print(f"resident executor vs HF generate, batch {b}: not measured ({hf.get('error', 'unknown error')})")
            continue
        r = hf[f"b{b}"]
        print(f"resident executor vs HF generate, batch {b}: {ms(r['executor_resident_step_s'])} vs "
              f"{ms(r['hf_step_s'])} ms/step (x{r['ratio']:.3f})")
    def f(x, spec):
        return "n/a" if x is None else format(x, spec)

    print(f"median |err| {f(summary['median_abs_error'], '.1%')} (<= 5%), P95 |err| "
          f"{f(summary['p95_abs_error'], '.1%')} (<= 15%), Kendall tau {f(summary['kendall_tau'], '.3f')} (>= 0.9), "
          f"resident/HF x{f(summary['resident_vs_hf_ratio'], '.3f')} (<= 1), best offload/resident b{big} "
          f"x{f(summary[f'best_offload_vs_resident_ratio_b{big}'], '.3f')} (<= 1.3)")
    by_trace = s.get(f"best_offload_vs_resident_ratio_b{big}_by_trace") or {}
    if by_trace:
        print(f"best offload (50% cache) / resident at batch {big}: "
              + ", ".join(f"{t} x{r:.3f}" for t, r in by_trace.items()))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
