"""The shipped sample trace: valid, and with the learned structure its README claims."""

from __future__ import annotations

from importlib import resources

from pregate.analysis.routing import expert_usage, lookahead_accuracy
from pregate.cli import main
from pregate.traces import validate_trace

SAMPLE = resources.files("pregate.traces").joinpath("samples/pregate-moe-tiny")


def test_sample_validates_and_describes_itself(capsys):
    trace = validate_trace(SAMPLE)
    assert trace.meta.family == "pregate_moe" and trace.meta.ahead_distance == 3
    assert trace.size_bytes < 4_000_000
    assert main(["trace-info", str(SAMPLE)]) == 0
    assert main(["trace-stats", str(SAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "lookahead" in out and "recall@2" in out


def test_sample_has_learned_routing_structure():
    trace = validate_trace(SAMPLE)
    ahead = lookahead_accuracy(trace).sort("distance")
    j1 = ahead.row(0, named=True)
    best_baseline = max(j1["chance_top1"], j1["most_frequent_top1"])
    assert j1["top1_accuracy"] >= 3 * best_baseline
    assert j1["recall_at_2"] > j1["top1_accuracy"]
    # accuracy falls with distance: the signal is about the next layers, not a constant guess
    assert ahead["top1_accuracy"].to_list() == sorted(ahead["top1_accuracy"].to_list(), reverse=True)
    usage = expert_usage(trace)
    assert usage.height == 6 and (usage["unused"] == 0).all()


MIXTRAL_TOPO = resources.files("pregate.traces").joinpath("samples/pregate-moe-mixtral-topo")


def test_mixtral_topology_sample_has_mixtrals_shape_and_learned_routing():
    trace = validate_trace(MIXTRAL_TOPO)
    stack = trace.meta.stacks["decoder"]
    assert (stack.moe_layers, stack.experts, stack.top_k) == (32, 8, 2)
    assert trace.meta.ahead_distance == 3 and trace.size_bytes < 5_000_000
    ahead = lookahead_accuracy(trace).sort("distance")
    j1 = ahead.row(0, named=True)
    assert j1["top1_accuracy"] >= 2 * max(j1["chance_top1"], j1["most_frequent_top1"])
    usage = expert_usage(trace)
    # trained routing is skewed but spread: no layer sends everything to a couple of experts
    assert usage.height == 32 and (usage["unused"] <= 1).all()


TINY_64 = resources.files("pregate.traces").joinpath("samples/pregate-moe-tiny-64")


def test_64_expert_sample_has_switch_base_64s_decoder_shape_and_learned_routing():
    trace = validate_trace(TINY_64)
    stack = trace.meta.stacks["decoder"]
    assert (stack.moe_layers, stack.experts, stack.top_k) == (6, 64, 1)
    assert trace.meta.ahead_distance == 3 and trace.size_bytes < 5_000_000
    ahead = lookahead_accuracy(trace).sort("distance")
    j1 = ahead.row(0, named=True)
    assert j1["top1_accuracy"] >= 3 * max(j1["chance_top1"], j1["most_frequent_top1"])
    assert ahead["top1_accuracy"].to_list() == sorted(ahead["top1_accuracy"].to_list(), reverse=True)
    assert expert_usage(trace).height == 6
