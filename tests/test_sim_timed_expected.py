"""The timed run against outcomes recorded from the engine before it was made event-lean.

``fixtures/timed/expected.json`` was written by ``fixtures/timed/record.py``
from the code as it was before the event-lean engine: every registered
speculation x caching pair on three small traces (top-1; top-2 encoder-decoder
at batch 2; 16 experts with two copy engines), plus compression, CPU compute,
double buffering, all-resident, per-layer caches, a prefetch limit, pageable
host memory, other profiles and dtypes. The traces are stored next to it, so a
change to the synthetic generator cannot move the inputs. The JSON result (with
both bounds), every per-pass step record and the timeline must stay identical
(fields added to the summary later are not compared).

A policy whose decisions change on purpose changes these outcomes; then rerun
``python tests/fixtures/timed/record.py tests/fixtures/timed`` (it rewrites the
traces too, and records from the SimPy reference engine, so the default engine
is still checked against SimPy) and say so in the commit.
"""

import hashlib
import json
from dataclasses import astuple
from pathlib import Path

import pytest

from pregate.simulator import Settings, Simulation
from pregate.traces import open_trace

HERE = Path(__file__).parent / "fixtures" / "timed"
CASES = json.loads((HERE / "expected.json").read_text())["cases"]


def _digest(outcome):
    h = hashlib.sha256()
    for s in outcome.steps:
        h.update(repr(astuple(s)).encode())
    return h.hexdigest(), hashlib.sha256(repr(outcome.events).encode()).hexdigest()


def _label(case):
    return case["trace"] + ":" + ",".join(f"{k}={v}" for k, v in sorted(case["settings"].items()))


@pytest.mark.parametrize("case", [pytest.param(c, id=_label(c), marks=() if i % 4 == 0 else pytest.mark.slow)
                                  for i, c in enumerate(CASES)])
def test_timed_run_matches_recorded_outcome(case):
    settings = Settings(**case["settings"])
    sim = Simulation(open_trace(HERE / case["trace"]), settings)
    # every recorded field must be identical; fields added to the summary since are not compared
    got, want = json.loads(sim.run(timeline=True, bounds=True).to_json()), json.loads(case["json"])
    got["settings"] = {k: got["settings"].get(k) for k in want["settings"]}
    assert {k: got.get(k) for k in want} == want
    outcome, _ = sim.timed(settings, timeline=True)
    assert _digest(outcome) == (case["steps_sha256"], case["events_sha256"])
