"""The vectorised synthetic generator, its presets against measured routing, and the token statistics."""

from collections import OrderedDict

import numpy as np
import pytest

from pregate.analysis.routing import lookahead_accuracy, lru_hits, token_stats, transition_accuracy
from pregate.cli import main
from pregate.simulator.synthetic import PRESETS, like_trace, make_trace
from pregate.traces import open_trace, validate_trace
from pregate.traces.tokens import TokenRouting, token_routing

# Measured on real traces of the pre-trained models (ARCHITECTURE.md, "Real routing, measured").
TARGETS = {
    "mixtral-8x7b": {"max_over_mean": 1.35, "norm_entropy": 0.988, "transition_in_sample": 0.41,
                     "transition_cv": 0.34, "transition_marginal": 0.23, "overlap": 0.38,
                     "lru_hit_at_2": 0.31, "lru_hit_at_4": 0.58, "lru_hit_at_6": 0.79},
    "flame-moe-290m": {"max_over_mean": 1.53, "norm_entropy": 0.994, "transition_in_sample": 0.24,
                       "transition_cv": 0.17, "transition_marginal": 0.04, "lru_seq_hit_at_8": 0.10,
                       "lru_seq_hit_at_16": 0.22, "lru_seq_hit_at_32": 0.47},
}


@pytest.mark.parametrize("like", sorted(TARGETS))
def test_like_presets_match_measured_routing(tmp_path, like):
    trace = open_trace(like_trace(tmp_path / like, like))
    (stats,) = token_stats(trace)
    off = {k: (round(stats["mean"][k], 3), t) for k, t in TARGETS[like].items()
           if abs(stats["mean"][k] / t - 1) > 0.10}
    assert not off, f"{like}: (generated, target) more than 10% apart: {off}"
    dec = trace.meta.stacks["decoder"]
    p = PRESETS[like]
    assert (dec.moe_layers, dec.experts, dec.top_k) == (p.layers, p.experts, p.top_k)
    assert trace.meta.ahead_distance == 0 and trace.meta.expert_bytes("bfloat16") == 2 * 3 * p.d_model * p.d_ff


def test_mixtral_preset_uses_the_published_shape(tmp_path):
    meta = open_trace(like_trace(tmp_path / "m", "mixtral-8x7b", seqs=1, decode_tokens=2)).meta
    assert meta.expert_bytes("bfloat16") == 3 * 4096 * 14336 * 2


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = like_trace(tmp_path / "a", "flame-moe-290m", seqs=3, decode_tokens=20, seed=5, ahead_accuracy=0.7)
    b = like_trace(tmp_path / "b", "flame-moe-290m", seqs=3, decode_tokens=20, seed=5, ahead_accuracy=0.7)
    c = like_trace(tmp_path / "c", "flame-moe-290m", seqs=3, decode_tokens=20, seed=6, ahead_accuracy=0.7)
    read = lambda p: (p / "part-00000.parquet").read_bytes()  # noqa: E731
    assert read(a) == read(b) and read(a) != read(c)
    validate_trace(a)


def test_ahead_accuracy_knob_sets_the_measured_accuracy(tmp_path):
    trace = open_trace(like_trace(tmp_path / "t", "mixtral-8x7b", seqs=8, decode_tokens=64,
                                  ahead_accuracy=[0.9, 0.6, 0.3]))
    acc = lookahead_accuracy(trace)
    got = acc["top1_accuracy"].to_list()
    assert got == pytest.approx([0.9, 0.6, 0.3], abs=0.03)
    assert acc["recall_at_2"].to_list() == pytest.approx([0.9, 0.6, 0.3], abs=0.03)


def test_make_trace_keeps_its_shapes_and_stickiness(tmp_path):
    trace = open_trace(make_trace(tmp_path / "t", seqs=3, prompt_len=4, new_tokens=30, layers=3, experts=8,
                                  top_k=2, encoder_layers=2, stickiness=0.9, skew=0.0))
    validate_trace(trace.path)
    frame = trace.collect()
    assert set(frame["stack"].unique()) == {"encoder", "decoder"}
    dec = [t for t in token_routing(trace) if t.stack == "decoder"][0]
    top1 = dec.experts[:, :, 0]
    repeat = (top1[1:] == top1[:-1])[~dec.first_of_seq[1:]].mean()
    assert repeat > 0.85  # uniform routing would repeat 1/8 of the time


def _tokens(experts, seq):
    experts = np.asarray(experts, dtype=np.int16)
    n = len(experts)
    return TokenRouting("decoder", int(experts.max()) + 1, np.asarray(seq), np.zeros(n), np.arange(n), experts)


@pytest.mark.parametrize("per_sequence", [False, True])
def test_lru_curve_equals_a_direct_lru(per_sequence):
    rng = np.random.default_rng(1)
    t_n, layers, k, e = 300, 2, 3, 10
    ex = np.stack([np.stack([rng.choice(e, k, replace=False) for _ in range(layers)]) for _ in range(t_n)])
    seq = np.repeat(np.arange(3), 100)
    got = lru_hits(_tokens(ex, seq), [1, 3, 5, 8], per_sequence, chunk=37)
    for layer in range(layers):
        for size in (1, 3, 5, 8):
            cache, hits = OrderedDict(), 0
            for t in range(t_n):
                if per_sequence and (t == 0 or seq[t] != seq[t - 1]):
                    cache.clear()
                for x in ex[t, layer]:
                    if x in cache:
                        hits += 1
                        cache.move_to_end(x)
                    else:
                        cache[x] = True
                        if len(cache) > size:
                            cache.popitem(last=False)
            assert got[layer][f"hit_at_{size}"] == pytest.approx(hits / (t_n * k), abs=1e-12)


def test_transition_accuracy_in_sample_cv_and_marginal():
    # layer 1 = (layer 0 + 1) mod 4, except in one sequence where it is layer 0 itself
    rng = np.random.default_rng(0)
    seq = np.repeat(np.arange(8), 50)
    l0 = rng.integers(0, 4, size=len(seq))
    l1 = np.where(seq == 7, l0, (l0 + 1) % 4)
    (row,) = transition_accuracy(_tokens(np.stack([l0, l1], axis=1)[:, :, None], seq), seed=0)
    assert row["in_sample"] == pytest.approx(350 / 400)
    assert row["cross_validated"] == pytest.approx(350 / 400)  # the odd sequence is wrong under either table
    assert row["marginal"] == pytest.approx(np.bincount(l1).max() / 400)


def test_synth_and_trace_stats_commands(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["synth", "--shape", "4x16x2", "--seqs", "3", "--tokens", "10", "-o", str(out)]) == 0
    assert main(["trace-stats", str(out)]) == 0
    text = capsys.readouterr().out
    assert "trans in" in text and "LRU@8" in text and "no 'ahead' column" in text
    assert main(["synth", "--shape", "4x16", "-o", str(out)]) == 2
    assert main(["synth", "--like", "mixtral-8x7b", "--ahead-accuracy", "1.5", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
