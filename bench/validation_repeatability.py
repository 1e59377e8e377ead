"""How well does a measurement agree with itself? The floor under ``pregate validate``'s error.

``pregate validate`` compares the simulator with the executor. When the
executor's own figures move between two runs of the same command on the same
machine, no cost model can agree with them more closely than they agree with
each other. This script takes two or more ``validation.json`` records of the
same matrix (same traces, batch sizes, policies and caches) and prints, for
every pair of records, how far the *measured* mean step latencies of the same
points lie apart, as the same three figures validate reports for the model:

* median and P95 of ``|b - a| / a`` over the points, pooled over both orders
  of the pair (neither run is the truth);
* Kendall's tau between the two runs' rankings of the points.

Then each record's own model figures beside them. Read the two together: a
model P95 of 25% on a machine whose repeated measurements differ by a P95 of
30% is as close as that machine can show.

    python bench/validation_repeatability.py run1/validation.json run2/validation.json run3/validation.json
    python bench/validation_repeatability.py RUN*/validation.json --json repeatability.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np


def point_key(p: dict) -> tuple:
    """What makes two records' points the same setting."""
    return (p["trace"], p["batch_size"], p.get("speculation"), p.get("cache_policy"), p.get("cache"),
            p.get("buffering"), json.dumps(p.get("policy_args", {}), sort_keys=True))


def load_record(path: str | Path) -> dict:
    """A validation record's offloaded points by key, and its own summary."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"error: {path} not found: give validation.json files written by 'pregate validate'")
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: {path} is not JSON ({exc.msg} at line {exc.lineno})")
    if not isinstance(data, dict) or "points" not in data or "summary" not in data:
        raise SystemExit(f"error: {path} has no 'points' and 'summary': give a validation.json from 'pregate validate'")
    return {"path": str(path), "points": {point_key(p): p for p in data["points"]}, "summary": data["summary"]}


def _tau(a, b) -> float | None:
    from pregate.executor.stats import kendall_tau

    return kendall_tau(a, b) if len(a) >= 2 else None


def compare_pair(a: dict, b: dict) -> dict:
    """Measured against measured over the points both records have."""
    keys = sorted(a["points"].keys() & b["points"].keys())
    if not keys:
        raise SystemExit(f"error: {a['path']} and {b['path']} share no point: records of the same matrix are needed")
    ma = np.array([a["points"][k]["measured_mean_s"] for k in keys], float)
    mb = np.array([b["points"][k]["measured_mean_s"] for k in keys], float)
    diffs = np.concatenate([np.abs(mb - ma) / ma, np.abs(ma - mb) / mb])
    return {"a": a["path"], "b": b["path"], "points": len(keys),
            "median_abs_difference": float(np.median(diffs)),
            "p95_abs_difference": float(np.percentile(diffs, 95)),
            "kendall_tau": _tau(ma, mb)}


def repeatability(paths: list[str]) -> dict:
    if len(paths) < 2:
        raise SystemExit("error: give at least two validation.json records of the same matrix")
    records = [load_record(p) for p in paths]
    pairs = [compare_pair(a, b) for a, b in itertools.combinations(records, 2)]
    models = [{"record": r["path"], "median_abs_error": r["summary"].get("median_abs_error"),
               "p95_abs_error": r["summary"].get("p95_abs_error"), "kendall_tau": r["summary"].get("kendall_tau")}
              for r in records]

    def spread(rows, key):
        vals = [row[key] for row in rows if row[key] is not None]
        return {"min": min(vals), "median": float(np.median(vals)), "max": max(vals)} if vals else None

    return {"pairs": pairs, "models": models,
            "measured_vs_measured": {k: spread(pairs, k) for k in
                                     ("median_abs_difference", "p95_abs_difference", "kendall_tau")},
            "model_vs_measured": {k: spread(models, k) for k in ("median_abs_error", "p95_abs_error", "kendall_tau")}}


def _labels(paths: list[str]) -> dict[str, str]:
    """Each record by its file name, or by its folder and name where names repeat (run1/validation.json)."""
    names = [Path(p).name for p in paths]
    if len(set(names)) == len(names):
        return dict(zip(paths, names))
    return {p: str(Path(*Path(p).parts[-2:])) for p in paths}


def render(result: dict) -> str:
    label = _labels([m["record"] for m in result["models"]])
    width = max(12, *(len(v) for v in label.values()))

    def pct(x):
        return "n/a" if x is None else f"{x:.1%}"

    def tau(x):
        return "n/a" if x is None else f"{x:.3f}"

    lines = ["measured against measured (the same points in two runs):",
             f"  {'record a':{width}} {'record b':{width}} points  median    P95    tau"]
    for p in result["pairs"]:
        lines.append(f"  {label[p['a']]:{width}} {label[p['b']]:{width}} {p['points']:6} "
                     f"{pct(p['median_abs_difference']):>7} {pct(p['p95_abs_difference']):>6} {tau(p['kendall_tau']):>6}")
    lines.append("simulated against measured (each record's own figures):")
    for m in result["models"]:
        lines.append(f"  {label[m['record']]:{2 * width + 1}} {'':6} {pct(m['median_abs_error']):>7} "
                     f"{pct(m['p95_abs_error']):>6} {tau(m['kendall_tau']):>6}")
    mm, sm = result["measured_vs_measured"], result["model_vs_measured"]

    def band(s, f):
        return "n/a" if s is None else f"{f(s['min'])}-{f(s['max'])} (median {f(s['median'])})"

    lines += ["in short:",
              f"  measured vs measured: median {band(mm['median_abs_difference'], pct)}, "
              f"P95 {band(mm['p95_abs_difference'], pct)}, tau {band(mm['kendall_tau'], tau)}",
              f"  model vs measured:    median {band(sm['median_abs_error'], pct)}, "
              f"P95 {band(sm['p95_abs_error'], pct)}, tau {band(sm['kendall_tau'], tau)}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("records", nargs="+", help="validation.json files of the same matrix, one per run")
    ap.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    result = repeatability(args.records)
    print(render(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
