"""Re-pricing a GPU record uses the semantics of the simulator that made it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import resimulate as rs  # noqa: E402

RUN3 = ROOT / "bench" / "results" / "gpu-validate-nvidia-h200.json"


def test_semantics_follow_the_record_date_unless_the_record_names_them():
    old = rs.semantics({"date": "2026-11-26 04:57 UTC"})
    assert old == {"synthetic": "v1", "protect_named": False, "prefetch_gate": "off"}
    between = rs.semantics({"date": "2026-12-01 09:58 UTC"})  # protection and gate, old generator
    assert between == {"synthetic": "v1", "protect_named": True, "prefetch_gate": "cost"}
    assert rs.semantics({"date": "2026-12-02 08:00 UTC"}) == {"synthetic": "v2", "protect_named": True,
                                                             "prefetch_gate": "cost"}
    named = rs.semantics({"date": "2026-11-26 04:57 UTC", "synthetic_generator": "v2", "protect_named": True})
    assert named["synthetic"] == "v2" and named["protect_named"]


@pytest.mark.slow
def test_run3_is_priced_on_its_own_traces_and_planner(tmp_path):
    """With the record's semantics every offloaded point has the executor's counts and the recorded prediction;
    with today's generator no point has the counts that were measured (that was the regression)."""
    record = json.loads(RUN3.read_text())
    for sub in ("own", "prot", "v2"):
        (tmp_path / sub).mkdir()
    points = [p for p in rs.resimulate(record, tmp_path / "own") if p["cache"] != "resident"]
    assert all(rs.counts_agree(p) for p in points)
    assert all(p["resimulated_mean_s"] == p["simulated_mean_s"] for p in points)
    assert all(p["priced_with"] == "traces v1, protect off, gate off" for p in points)
    protected = dict(rs.semantics(record), protect_named=True)
    with_protection = [p for p in rs.resimulate(record, tmp_path / "prot", sem=protected) if p["cache"] != "resident"]
    assert 0 < sum(not rs.counts_agree(p) for p in with_protection) < len(points)
    today = dict(rs.semantics(record), synthetic="v2")
    on_new_traces = [p for p in rs.resimulate(record, tmp_path / "v2", sem=today) if p["cache"] != "resident"]
    assert not any(rs.counts_agree(p) for p in on_new_traces)
