"""The demo: a ranked table and a report from the shipped sample (or, without it, a stated synthetic trace)."""

from __future__ import annotations

import pytest

from pregate.cli import main
from pregate.simulator import sweep as sw


def test_sample_trace_is_shipped():
    path = sw.sample_trace_path()
    if not path.is_dir():
        pytest.skip(f"the sample trace is not in this checkout yet ({path})")
    assert sw.sample_trace() == path


def test_demo_without_sample_says_so_and_completes(tmp_path, capsys, monkeypatch):
    def missing(name=sw.DEFAULT_SAMPLE):
        raise sw.SweepError("missing")

    monkeypatch.setattr(sw, "sample_trace", missing)
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--workers", "1", "--quiet", "--top", "5"]) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if "sample trace is missing" in line]
    assert len(notes) == 1 and "SYNTHETIC" in notes[0]
    text = captured.out
    assert "tok/s" in text and "x resident" in text and "x oracle" in text and "best:" in text
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    assert len(sw.read_results(out / "results")) == 72
    # a rerun reuses every point
    assert main(["demo", "-o", str(out), "--workers", "1", "--quiet"]) == 0
    assert "reused" in capsys.readouterr().out
