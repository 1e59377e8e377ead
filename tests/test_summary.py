"""The one summary type: hand-computed figures, and the simulator's and executor's JSON carry it unchanged."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pregate.simulator import Settings, simulate
from pregate.simulator.cache import CacheCounts
from pregate.simulator.summary import RunSummary
from pregate.simulator.synthetic import make_trace


@dataclass
class Step:
    decode: bool
    tokens: int
    latency_s: float


STEPS = [Step(False, 8, 0.5), Step(True, 2, 0.1), Step(True, 2, 0.3), Step(True, 2, 0.2)]
COUNTS = CacheCounts(hits=30, misses=10, bypasses=1, prefetches=8, prefetch_hits=6, wasted_prefetches=2, evictions=4)


def test_figures_match_a_hand_computation():
    r = RunSummary.of_run(STEPS, COUNTS, requests=40, late_hits=3, capacity=5, bytes_moved=1234.0,
                          total_s=1.1, stall_s=0.22)
    assert (r.steps, r.prefill_passes, r.tokens) == (3, 1, 6)
    assert (r.hits, r.late_hits, r.misses, r.bypasses, r.evictions) == (27, 3, 10, 1, 4)
    assert r.decode_s == pytest.approx(0.6)
    assert r.mean_step_latency_s == pytest.approx(0.2)
    assert r.p50_step_latency_s == pytest.approx(0.2)
    assert r.p95_step_latency_s == pytest.approx(0.29)  # linear interpolation between 0.2 and 0.3
    assert r.tokens_per_s == pytest.approx(10.0)
    assert r.stall_share == pytest.approx(0.2)
    assert r.prefetch_precision == pytest.approx(0.75)
    assert r.bytes_moved == 1234 and isinstance(r.bytes_moved, int)


def test_resident_runs_count_every_request_as_a_hit_and_nothing_else(tmp_path):
    # no special case in the summary: the resident cache starts with every expert pinned
    make_trace(tmp_path / "t", seqs=2, prompt_len=4, new_tokens=4, layers=3, experts=8, top_k=2, seed=5)
    r = RunSummary.from_dict(simulate(tmp_path / "t", Settings(buffering="resident")).summary)
    assert r.hits == r.requests > 0
    assert (r.misses, r.prefetches, r.evictions, r.bytes_moved, r.prefetch_precision) == (0, 0, 0, 0, None)


def test_a_run_without_decode_steps_reports_every_pass():
    prefill = [Step(False, 4, 0.5), Step(False, 4, 1.5)]
    r = RunSummary.of_run(prefill, COUNTS, requests=40, late_hits=0, capacity=5, bytes_moved=0,
                          total_s=2.0, stall_s=0.0)
    assert (r.steps, r.prefill_passes, r.tokens, r.mean_step_latency_s) == (2, 2, 8, 1.0)


def test_to_dict_slices_keep_field_order():
    r = RunSummary.of_run(STEPS, COUNTS, requests=40, late_hits=3, capacity=5, bytes_moved=0,
                          total_s=1.1, stall_s=0.22)
    assert list(r.to_dict()) == RunSummary.keys()
    assert list(r.to_dict(after="bytes_moved", until="tokens_per_s")) == [
        "total_s", "decode_s", "mean_step_latency_s", "p50_step_latency_s", "p95_step_latency_s", "tokens_per_s"]
    assert RunSummary.from_dict({**r.to_dict(), "other": 1}) == r


def test_simulator_summary_carries_the_shared_figures(tmp_path):
    make_trace(tmp_path / "t", seqs=3, prompt_len=4, new_tokens=8, layers=3, experts=8, top_k=2, ahead=2, seed=4)
    summary = simulate(tmp_path / "t", Settings(cache=5, speculation="layer_minus_1")).summary
    shared = RunSummary.from_dict(summary)
    assert shared.hits + shared.late_hits + shared.misses == shared.requests
    assert summary["prefetch_precision"] == shared.prefetch_precision


def test_executor_summary_carries_the_shared_figures_in_order(tmp_path):
    torch = pytest.importorskip("torch")  # noqa: F841
    from pregate.executor.run import TraceExecutor
    from pregate.executor.shapes import make_shape_trace

    trace = make_shape_trace(tmp_path / "tiny", "tiny", seqs=2, prompt_len=3, new_tokens=3)
    summary = TraceExecutor(trace, "cpu").run(Settings(cache="25%"), warmup=0).summary()
    keys = list(summary)
    assert keys[0] == "device" and keys[1:1 + len(RunSummary.keys())] == RunSummary.keys()
    shared = RunSummary.from_dict(summary)
    assert shared.hits + shared.late_hits + shared.misses == shared.requests
