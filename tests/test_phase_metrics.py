"""Per-phase metrics: decode and prefill apart, hits apart from late hits, the headline on decode."""

from __future__ import annotations

import json

import pytest

from pregate.cli import main
from pregate.simulator import Settings, simulate
from pregate.simulator.synthetic import make_trace

OLD_KEYS = ("hits", "late_hits", "misses", "prefetches", "bytes_moved", "stall_s", "stall_share", "tokens_per_s",
            "mean_step_latency_s", "ratio_to_resident", "ratio_to_oracle")


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    # long prompts: the prefill passes carry a large share of the stall, as in the motivating case
    return make_trace(tmp_path_factory.mktemp("ph") / "t", seqs=4, prompt_len=12, new_tokens=8, layers=4, experts=8,
                      top_k=2, seed=6)


@pytest.mark.parametrize("speculation", ["none", "layer_minus_1"])
def test_phases_add_up_to_the_totals(trace, speculation):
    # the cost gate off: every prefetch the policy names is issued, so some land late
    s = simulate(trace, Settings(speculation=speculation, cache_policy="lfu", cache="25%",
                                 prefetch_gate="off")).summary
    for key in OLD_KEYS:
        assert key in s
    for key in ("hits", "late_hits", "misses", "prefetches"):
        assert s[f"decode_{key}"] + s[f"prefill_{key}"] == s[key]
    assert s["decode_requests"] + s["prefill_requests"] == s["requests"]
    assert s["decode_passes"] == s["steps"] and s["prefill_passes"] > 0
    assert s["decode_stall_s"] + s["prefill_stall_s"] == pytest.approx(s["stall_s"])
    assert s["decode_time_s"] == pytest.approx(s["decode_s"])
    assert s["decode_stall_share"] == pytest.approx(s["decode_stall_s"] / s["decode_time_s"])
    issued = s["decode_bytes_issued"] + s["prefill_bytes_issued"]
    if speculation == "none":
        assert issued == s["bytes_moved"]  # every copy is a demand miss: nothing cancelled
    else:
        assert issued >= s["bytes_moved"] and s["decode_late_hits"] > 0
    assert s["decode_hit_rate"] == pytest.approx(s["decode_hits"] / s["decode_requests"])
    assert s["decode_late_hit_rate"] == pytest.approx(s["decode_late_hits"] / s["decode_requests"])


def test_headline_is_decode_unless_phase_all(trace, tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["simulate", str(trace), "--cache-policy", "lfu", "--cache", "25%", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    s = json.loads(out.read_text())
    assert s["decode_stall_share"] != pytest.approx(s["stall_share"])  # the two differ on this trace
    latency = next(line for line in text.splitlines() if "step latency" in line)
    assert latency.strip().startswith("decode step latency") and f"stall share {s['decode_stall_share']:.1%}" in latency
    assert "references (decode)" in text
    assert any(line.strip().startswith("prefill:") and f"hits {s['prefill_hits']}" in line
               and f"late hits {s['prefill_late_hits']}" in line for line in text.splitlines())
    assert main(["simulate", str(trace), "--cache-policy", "lfu", "--cache", "25%", "--phase", "all"]) == 0
    text = capsys.readouterr().out
    assert "references (all passes, total time)" in text and f"stall share {s['stall_share']:.1%}" in text
    assert "decode step latency" not in text


def test_ranking_keeps_hits_and_late_hits_apart(trace, tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["sweep", "--trace", str(trace), "--speculation", "layer_minus_1", "--cache", "25%", "-o", str(out),
                 "--prefetch-gate", "off", "--workers", "1", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "found on the GPU" not in text
    header = next(line for line in text.splitlines() if line.strip().startswith("#"))
    assert "hits" in header and "late" in header
    from pregate.simulator.sweep import read_results

    row = read_results(out).row(0, named=True)
    late = f"{row['decode_late_hit_rate']:.0%}"
    hits = f"{row['decode_hit_rate']:.0%}"
    first = text.splitlines()[text.splitlines().index(header) + 1]
    assert f" {hits} " in first and f" {late} " in first and row["decode_late_hits"] > 0
    assert "late: decode requests still being copied" in text
