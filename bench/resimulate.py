"""Re-price a GPU validation record with this checkout's simulator, without a GPU.

``bench/gpu_validate.sh`` records, per point, what the executor measured on the
GPU and what the simulator predicted from the profile calibrated in the same
run. This script keeps the measured side as recorded and recomputes the
predicted side with the current simulator, from the same profile (the
``profile_toml`` in the record) and the same synthetic traces (rebuilt from
their seed with the script's parameters). Two uses:

* reproducibility: on the simulator that made the record, every prediction
  comes back identical (``--check`` fails otherwise);
* a change to the cost model can be tried against real measurements offline.
  The calibrated numbers stay those of the run; only the model around them
  changes, so a better fit here is evidence, not proof: a new GPU run decides.

A record is priced with the semantics of the simulator that made it, where
those changed since (each point's line says which it got): the record's date
decides, unless the record names them itself (``synthetic_generator``,
``protect_named``, per-point ``prefetch_gate``). Changes that matter:

* 2026-12-01 09:53 UTC, the planner's protection: an expert the speculation
  names that is already resident stays protected for the rest of the round;
  before, only a just-prefetched expert was protected. The same change added
  the prefetch gate (before: every prefetch the policy named was issued);
* 2026-12-01 10:03 UTC, the vectorised synthetic generator: the same seed
  gives other routing, so older records are rebuilt with the first generator
  (``bench/synthetic_v1.py``), row for row what they ran on.

The runtime profile (the executor's host costs) is the record's own: its
``runtime_toml``, or for a record written before hardware and runtime were
split, the host costs in its schema /1 profile. ``--runtime NAME`` prices the
record's hardware with another runtime instead (``pregate-eager``, which is
derived from this very record, is then an in-sample fit, not a prediction).
``--write-runtime`` writes the record's own runtime next to it as
``RECORD.runtime.toml``.

    python bench/resimulate.py bench/results/gpu-validate-nvidia-h200.json
    python bench/resimulate.py RECORD.json --check
    python bench/resimulate.py RECORD.json --runtime pregate-eager
    python bench/resimulate.py RECORD.json --write-runtime
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

# the parameters bench/gpu_validate.sh builds its traces with (a record may carry its own)
DEFAULT_TRACES = {
    "switch-base-8": {"seqs": 32, "prompt_len": 16, "new_tokens": 24},
    "switch-base-64": {"seqs": 32, "prompt_len": 16, "new_tokens": 24},
    "mixtral-like": {"seqs": 32, "prompt_len": 16, "new_tokens": 8},
}


# when a semantics changed (UTC, the form of a record's "date"); a record made before uses the old one
PROTECTION_SINCE = "2026-12-01 09:53"
SYNTHETIC_V2_SINCE = "2026-12-01 10:03"


def semantics(record: dict) -> dict:
    """How to price ``record``: the trace generator, protection, and the default prefetch gate."""
    date = str(record.get("date", ""))
    old = bool(date) and date < PROTECTION_SINCE
    return {
        "synthetic": record.get("synthetic_generator") or ("v1" if date and date < SYNTHETIC_V2_SINCE else "v2"),
        "protect_named": bool(record.get("protect_named", not old)),
        "prefetch_gate": "off" if old else "cost",
    }


def semantics_label(sem: dict, gate: str) -> str:
    return f"traces {sem['synthetic']}, protect {'on' if sem['protect_named'] else 'off'}, gate {gate}"


def build_trace(folder: Path, name: str, params: dict, dtype: str, generator: str) -> None:
    from pregate.executor.shapes import make_shape_trace, shape_meta

    if generator == "v1":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from synthetic_v1 import make_trace_v1

        make_trace_v1(folder, shape_meta(name, dtype), **params)
    else:
        make_shape_trace(folder, name, dtype=dtype, **params)


def summary(points: list[dict], key: str) -> dict:
    from pregate.executor.stats import kendall_tau

    errors = np.abs([(p[key] - p["measured_mean_s"]) / p["measured_mean_s"] for p in points])
    return {
        "median_abs_error": float(np.median(errors)),
        "p95_abs_error": float(np.percentile(errors, 95)),
        "kendall_tau": kendall_tau([p["measured_mean_s"] for p in points], [p[key] for p in points]),
    }


def record_runtime(record: dict, workdir: Path, name: str = ""):
    """The runtime profile that prices the record: ``name``, else the record's own."""
    from pregate.simulator.profile import load_profile
    from pregate.simulator.runtime import load_runtime

    profile_path = workdir / "profile.toml"
    profile_path.write_text(record["profile_toml"])
    profile = load_profile(profile_path)
    if not name and record.get("runtime_toml"):
        name = str(workdir / "profile.runtime.toml")
        Path(name).write_text(record["runtime_toml"])
    return profile_path, profile, load_runtime(name, profile)


def resimulate(record: dict, workdir: Path, groups: int = 2, dtype: str = "bfloat16",
               runtime_name: str = "", sem: dict | None = None) -> list[dict]:
    """Each point with ``resimulated_mean_s`` (decode steps) and the counts and semantics it was priced with."""
    from pregate.executor.run import trace_frame, trace_stream
    from pregate.simulator.api import Simulation
    from pregate.simulator.planner import Planner
    from pregate.simulator.settings import Settings
    from pregate.traces import open_trace

    profile_path, profile, runtime = record_runtime(record, workdir, runtime_name)
    params = record.get("traces") or DEFAULT_TRACES
    sem = sem or semantics(record)
    sims: dict[tuple, Simulation] = {}
    out = []
    for p in record["resident_points"] + record["points"]:
        name, batch = p["trace"], p["batch_size"]
        if (name, batch) not in sims:
            folder = workdir / name
            if not folder.exists():
                build_trace(folder, name, params[name], dtype, sem["synthetic"])
            trace = open_trace(folder)
            stream = trace_stream(trace_frame(trace), trace.meta, batch, groups)
            sims[(name, batch)] = Simulation(None, Settings(profile=str(profile_path), batch_size=batch, dtype=dtype),
                                             profile=profile, stream=stream, runtime=runtime)
        sim = sims[(name, batch)]
        base = sim.settings
        gate = p.get("prefetch_gate", sem["prefetch_gate"])
        if p["cache"] == "resident":
            st = base.replace(buffering="resident")
        else:
            st = base.replace(speculation=p["speculation"], cache_policy=p["cache_policy"], cache=p["cache"],
                              prefetch_gate=gate)
        Planner.protect_named = sem["protect_named"]
        try:
            result = sim.run(st, bounds=False)
        finally:
            Planner.protect_named = True
        steps = [s for s in result.steps if s.decode]
        out.append(dict(p, resimulated_mean_s=float(np.mean([s.latency_s for s in steps])),
                        resimulated_hits=result.summary["hits"] + result.summary["late_hits"],
                        resimulated_misses=result.summary["misses"], priced_with=semantics_label(sem, gate)))
    return out


def counts_agree(p: dict) -> bool | None:
    """Do the re-priced hits (on time or late) and misses equal what the executor counted? (None: not recorded)"""
    if "measured_misses" not in p or p["cache"] == "resident":
        return None
    measured = (p["measured_hits"] + p.get("measured_late_hits", 0), p["measured_misses"])
    return measured == (p["resimulated_hits"], p["resimulated_misses"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("record", help="a gpu-validate-<gpu>.json written by bench/gpu_validate.sh")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 unless every offloaded prediction equals the recorded one (same semantics)")
    ap.add_argument("--groups", type=int, default=2, help="groups per batch size, as the run used (default 2)")
    ap.add_argument("--runtime", default="", help="price with this runtime profile instead of the record's own")
    ap.add_argument("--write-runtime", action="store_true",
                    help="write the record's own runtime profile next to it (RECORD.runtime.toml)")
    ap.add_argument("--synthetic", choices=("record", "v1", "v2"), default="record",
                    help="trace generator: the one the record's run used (default), or v1/v2 to compare")
    ap.add_argument("--protect", choices=("record", "on", "off"), default="record",
                    help="planner protection of named resident experts: as when the record was made (default), "
                         "or on/off to compare")
    args = ap.parse_args(argv)
    record = json.loads(Path(args.record).read_text())
    if not record.get("points") or not record.get("profile_toml"):
        print(f"error: {args.record} has no points or no profile to re-price", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        if args.write_runtime:
            from pregate.simulator.runtime import render_runtime

            _, _, own = record_runtime(record, Path(tmp))
            target = Path(args.record).with_suffix(".runtime.toml")
            target.write_text(render_runtime(own, f"The runtime profile of {Path(args.record).name}: the host costs "
                                                  "its calibration measured (bench/resimulate.py --write-runtime)."))
            print(f"wrote {target}")
        sem = semantics(record)
        if args.synthetic != "record":
            sem["synthetic"] = args.synthetic
        if args.protect != "record":
            sem["protect_named"] = args.protect == "on"
        points = resimulate(record, Path(tmp), args.groups, runtime_name=args.runtime, sem=sem)
    print(f"record made {record.get('date', '(no date)')}; priced with {semantics_label(sem, sem['prefetch_gate'])} "
          "(a point that names its own gate keeps it)")
    print(f"{'trace':15} {'b':>3} {'policy':27} {'cache':>8} {'meas ms':>8} {'rec ms':>8} {'now ms':>8} {'err now':>8} "
          f"{'counts':>6}  priced with")
    for p in points:
        policy = "resident" if p["cache"] == "resident" else f"{p['speculation']}+{p['cache_policy']}"
        err = (p["resimulated_mean_s"] - p["measured_mean_s"]) / p["measured_mean_s"]
        agree = {None: "-", True: "same", False: "differ"}[counts_agree(p)]
        print(f"{p['trace'][:15]:15} {p['batch_size']:>3} {policy[:27]:27} {p['cache']:>8} "
              f"{p['measured_mean_s'] * 1e3:8.3f} {p['simulated_mean_s'] * 1e3:8.3f} "
              f"{p['resimulated_mean_s'] * 1e3:8.3f} {err:+8.1%} {agree:>6}  {p['priced_with']}")
    offloaded = [p for p in points if p["cache"] != "resident"]
    known = [counts_agree(p) for p in offloaded if counts_agree(p) is not None]
    if known:
        print(f"hits and misses as the executor counted them: {sum(known)} of {len(known)} offloaded points")
    for label, key in (("recorded", "simulated_mean_s"), ("now", "resimulated_mean_s")):
        s = summary(offloaded, key)
        print(f"{label:9} median |err| {s['median_abs_error']:.1%}, P95 |err| {s['p95_abs_error']:.1%}, "
              f"Kendall tau {s['kendall_tau']:.3f} ({len(offloaded)} offloaded points)")
    resident_differ = [p for p in points if p["cache"] == "resident" and p["resimulated_mean_s"] != p["simulated_mean_s"]]
    if resident_differ:
        print(f"{len(resident_differ)} of {len(points) - len(offloaded)} all-resident points are priced differently "
              "from the record (not part of the check: the accuracy figures are over offloaded points)")
    if args.check:
        differ = [p for p in offloaded if p["resimulated_mean_s"] != p["simulated_mean_s"]]
        if differ:
            print(f"{len(differ)} of {len(offloaded)} offloaded predictions differ from the record")
            return 1
        print(f"all {len(offloaded)} offloaded predictions equal the record")
    return 0


if __name__ == "__main__":
    sys.exit(main())
