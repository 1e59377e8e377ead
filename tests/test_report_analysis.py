"""Routing analysis: transition counts, reuse distances and LRU curves checked against the simulator."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pregate.analysis.locality import lru_curve, lru_hit_rate_per_layer, request_frame, stack_distances
from pregate.analysis.plots import pareto_front
from pregate.analysis.routing import expert_counts, transition_counts, transition_predictability
from pregate.simulator import Settings, Simulation
from pregate.simulator.synthetic import make_trace
from pregate.traces import open_trace


@pytest.fixture(scope="module")
def decode_only(tmp_path_factory):
    return make_trace(tmp_path_factory.mktemp("loc") / "t", seqs=3, prompt_len=0, new_tokens=40, layers=4, experts=8,
                      top_k=1, seed=5)


def test_stack_distances_by_hand():
    d = stack_distances(np.array([0, 1, 0, 2, 1, 1, 0]), 3)
    assert d.tolist() == [-1, -1, 1, -1, 2, 0, 2]


@pytest.mark.parametrize("size", [1, 3, 8, 17, 32])
def test_lru_curve_equals_simulated_lru(decode_only, size):
    requests = request_frame(open_trace(decode_only))
    hits = round(lru_curve(requests, [size])["hit_rate"][0] * requests.height)
    counts = Simulation(decode_only, Settings()).replay(Settings(cache=str(size), cache_policy="lru"))
    assert hits == counts.hits


def test_per_layer_hit_rates_add_up(decode_only):
    requests = request_frame(open_trace(decode_only))
    per_layer = lru_hit_rate_per_layer(requests, [8])
    per = requests.group_by("layer").len().join(per_layer, on="layer")
    total = (per["len"] * per["hit_rate"]).sum() / requests.height
    assert total == pytest.approx(lru_curve(requests, [8])["hit_rate"][0])


def test_transition_and_usage_counts(decode_only):
    trace = open_trace(decode_only)
    rows = trace.collect()
    counts = expert_counts(trace)
    assert counts.height == 4 * 8 and counts["n"].sum() == rows.height
    assert counts.group_by("layer").agg(pl.col("share").sum())["share"].to_list() == pytest.approx([1.0] * 4)
    trans = transition_counts(trace)
    assert sorted(trans["layer"].unique().to_list()) == [0, 1, 2]
    assert trans["n"].sum() == rows.filter(pl.col("layer") < 3).height  # top-1: one pair per token and layer
    pred = transition_predictability(trans)
    assert ((pred["transition_top1"] >= pred["most_frequent_top1"] - 1e-12)).all()


def test_pareto_front():
    xs = np.array([1.0, 2.0, 2.0, 3.0, 4.0])
    ys = np.array([5.0, 4.0, 6.0, 4.5, 1.0])
    assert pareto_front(xs, ys).tolist() == [0, 1, 4]
