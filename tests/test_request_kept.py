"""A setting that cannot be honoured as given is refused (or the change is said), never silently altered."""

from __future__ import annotations

import polars as pl
import pytest

from pregate.cli import main
from pregate.simulator.errors import SimulatorError
from pregate.simulator.settings import parse_cache_size
from pregate.simulator.synthetic import make_trace


@pytest.fixture(scope="module")
def trace12(tmp_path_factory):
    return make_trace(tmp_path_factory.mktemp("req") / "t", seqs=2, prompt_len=2, new_tokens=3, layers=12,
                      experts=8, top_k=1, seed=2)


def _error_line(capsys, code) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error:"), err
    return err


def test_a_count_above_all_experts_is_refused_not_clamped(trace12, capsys):
    with pytest.raises(SimulatorError, match="more than the 96 experts"):
        parse_cache_size("1000000", 96, 1000)
    with pytest.raises(SimulatorError, match="more than the 96 experts"):
        parse_cache_size(97, 96, 1000)
    assert parse_cache_size("96", 96, 1000) == 96
    assert parse_cache_size("1TB", 96, 1000) == 96  # bytes: room for every expert
    err = _error_line(capsys, main(["simulate", str(trace12), "--cache", "1000000", "--no-bounds"]))
    assert "more than the 96 experts" in err and "at most 96" in err


def test_per_layer_cache_below_one_slot_per_layer_is_refused(trace12, capsys):
    err = _error_line(capsys, main(["simulate", str(trace12), "--per-layer", "--cache", "5", "--no-bounds"]))
    assert "12 MoE layers" in err and "7 layers without a slot" in err
    assert main(["simulate", str(trace12), "--per-layer", "--cache", "12", "--no-bounds"]) == 0
    assert main(["simulate", str(trace12), "--cache", "5", "--no-bounds"]) == 0  # one global cache: fine


def test_execute_batch_size_is_what_runs(capsys):
    from pregate.executor.cli_execute import _prompt_limit

    assert _prompt_limit(None, 16) == 16  # the default limit grows to one full batch
    assert _prompt_limit(None, 2) == 4
    assert _prompt_limit(20, 16) == 20
    err = _error_line(capsys, main(["execute", "--model", "pregate-moe-tiny", "--random-init", "--batch-size", "16",
                                    "--limit", "4"]))
    assert "--batch-size 16" in err and "--limit is 4" in err


def test_recommend_says_when_it_broke_a_tie():
    from pregate.simulator.recommend import Recommendation, _pick, _ties, format_recommendation

    frame = pl.DataFrame({"key": ["a", "b", "c"], "tokens_per_s": [100.0, 100.0, 90.0],
                          "peak_gpu_bytes": [2_000, 1_000, 500]})
    assert _pick(frame)["key"] == "b" and _ties(frame) == 1
    best = {"speculation": "none", "cache_policy": "lru", "cache": "1", "cache_capacity_experts": 1,
            "compression": "none", "buffering": "cache", "tokens_per_s": 100.0, "mean_step_latency_s": 0.01,
            "stall_share": 0.5, "hit_rate": 0.0, "bytes_moved": 0, "peak_gpu_bytes": 1_000, "ratio_to_resident": 2.0,
            "ratio_to_oracle": 1.0, "bound_resident_tokens_per_s": 200.0, "bound_oracle_tokens_per_s": 100.0,
            "key": "b"}
    memory = {"vram_bytes": 1e9, "dense_bytes": 1e8, "margin_bytes": 1e8, "expert_bytes": 1e6, "total_experts": 8,
              "cache_experts": 4}
    rec = Recommendation("m", "rtx3090", 1, False, "routing recorded", memory, best, best, points=3, ties=1)
    text = format_recommendation(rec)
    assert "tie: 1 other setting(s)" in text and "least GPU memory" in text
    assert "tie:" not in format_recommendation(Recommendation("m", "rtx3090", 1, False, "r", memory, best, best))


def test_an_uncertain_ranking_names_the_challengers_scheme():
    """The challenger may be the winner's policies under another buffering scheme: the line says which."""
    from pregate.simulator.recommend import Recommendation, format_recommendation

    best = {"speculation": "eam", "cache_policy": "next-use", "cache": "57", "cache_capacity_experts": 57,
            "compression": "none", "buffering": "cpu-or-fetch", "tokens_per_s": 5.2, "mean_step_latency_s": 0.19,
            "stall_share": 0.8, "hit_rate": 0.6, "bytes_moved": 0, "peak_gpu_bytes": 1_000, "ratio_to_resident": 5.6,
            "ratio_to_oracle": 0.6, "bound_resident_tokens_per_s": 29.4, "bound_oracle_tokens_per_s": 3.3, "key": "w"}
    memory = {"vram_bytes": 1e9, "dense_bytes": 1e8, "margin_bytes": 1e8, "expert_bytes": 1e6, "total_experts": 256,
              "cache_experts": 57}
    challenger = {"speculation": "eam", "cache_policy": "next-use", "cache": "57", "compression": "none",
                  "buffering": "cache", "tokens_per_s": 5.2, "tokens_per_s_low": 3.1, "tokens_per_s_high": 7.9}
    band = {"mode": "corners", "values": 24, "tokens_per_s_low": 3.2, "tokens_per_s_high": 7.8,
            "mean_step_latency_s_low": 0.13, "mean_step_latency_s_high": 0.31, "winner_holds": False,
            "challenger": challenger, "decided_by": {"key": "host.per_block", "flips_at": "low", "low": 0.0,
                                                     "high": 1.6e-4}}
    text = format_recommendation(Recommendation("m", "rtx3090", 1, False, "r", memory, best, best, uncertainty=band))
    assert ("ranking: NOT certain: eam + next-use (buffering cache, cache 57, compression none) is faster somewhere in the "
            "band; it flips when host.per_block is at its low end") in text
