"""The demo: answer lines for each part, a report that leads with them, a stated synthetic fallback."""

from __future__ import annotations

import pytest

from pregate import demo
from pregate.cli import main
from pregate.simulator import sweep as sw


def test_sample_trace_is_shipped():
    path = sw.sample_trace_path()
    if not path.is_dir():
        pytest.skip(f"the sample trace is not in this checkout yet ({path})")
    assert sw.sample_trace() == path


@pytest.fixture
def small_grid(monkeypatch):
    """The demo's job on a smaller grid, so that the test stays fast; the answer logic is the same."""
    monkeypatch.setattr(demo, "SPECULATION", ["none", "layer_minus_1"])
    monkeypatch.setattr(demo, "CACHING", ["lru"])


def _missing(name=sw.DEFAULT_SAMPLE):
    raise sw.SweepError("missing")


@pytest.mark.slow
def test_demo_prints_an_answer_for_every_part(tmp_path, capsys, monkeypatch, small_grid):
    monkeypatch.setattr(sw, "sample_trace", _missing)  # synthetic traces of both shapes: small and fast
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--workers", "1", "--quiet", "--top", "3"]) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if "sample trace is missing" in line]
    assert len(notes) == 2 and all("SYNTHETIC" in n for n in notes)
    text = captured.out
    answer = text.split("The answer:")[1].split("fastest points")[0]
    for title in ("switch-base-8, bf16 experts", "switch-base-8, fp32 experts", "mixtral-8x7b, bf16 host copies",
                  "mixtral-8x7b, int4 host copies"):
        assert title in answer
    assert answer.count("priced as switch-base-8") == 2
    # two GPU-cache parts, two placement parts (one per host kind) and the table of where each placement wins
    assert answer.count("priced as mixtral-8x7b") == 5
    for host in demo.PLACEMENT_HOSTS:
        assert f"mixtral-8x7b, bf16: CPU placements on a {host} host" in answer
    assert answer.count(f"  {demo.PLACEMENT_RUNTIME} runtime: run ") == 4 + len(demo.PLACEMENT_HOSTS)
    assert answer.count("  gpu-bound runtime: run ") == 4
    assert answer.count("the all-resident step latency") == 8 and answer.count("the perfect-prediction reference") == 8
    wins = answer.split("Where each placement wins")[1].splitlines()[1:]
    sizes = [line for line in wins if " experts on the GPU: " in line]
    assert len(sizes) >= 2 and all(f"{host}: " in line for line in sizes for host in demo.PLACEMENT_HOSTS)
    # every best-worst pair of a GPU-cache part differs by at least 1.5x, or the next line says why not
    lines = answer.splitlines()
    for i, line in enumerate(lines):
        if " runtime: run " in line and "computed on the CPU" not in line:
            factor = float(line.rsplit(", ", 1)[1].split("x slower")[0])
            assert factor >= demo.MIN_SPREAD or "differ by less than" in lines[i + 1]
    assert "OVER MEMORY" not in answer  # the demo's cache sizes fit 24 GB
    html = (out / "report.html").read_text()
    assert html.index("The answer") < html.index("Ranking") < html.index("<figure")
    assert html.count('class="answer"') == 4 + len(demo.PLACEMENT_HOSTS) + 1 and "gpu-bound runtime" in html
    assert "Where each placement wins" in html and "fastest placement per cache size and host" in html
    # a rerun reuses every point
    assert main(["demo", "-o", str(out), "--workers", "1", "--quiet"]) == 0
    assert "reused" in capsys.readouterr().out


def test_answer_says_why_when_best_and_worst_are_close():
    import polars as pl

    part = demo.Part("p", "t", "m", total_experts=8, expert_bytes=1_000_000, dense_bytes=0, all_fit=True)
    row = dict(policy="none + lru", cache_capacity_experts=2, tokens_per_s=100.0, ratio_to_resident=1.01,
               bound_resident_tokens_per_s=101.0, ratio_to_oracle=1.0, bound_oracle_tokens_per_s=100.0,
               stall_share=0.01, over_memory=False, pricing="routing of a, priced as m")
    close = pl.DataFrame([row, {**row, "tokens_per_s": 90.0}])
    apart = pl.DataFrame([row, {**row, "tokens_per_s": 50.0}])
    lines = demo.answer(part, {"pregate-eager": close, "gpu-bound": apart})
    assert lines[0].startswith("p: routing of a, priced as m") and "keep them all resident" in lines[1]
    assert "1.11x slower" in lines[2] and "differ by less than 1.5x" in lines[3] and "1%" in lines[3]
    assert lines[4].startswith("  gpu-bound runtime") and "2.00x slower" in lines[4] and len(lines) == 5


def test_demo_price_as_needs_trace(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path), "--price-as", "mixtral-8x7b"]) == 2
    assert "go with --trace" in capsys.readouterr().err
