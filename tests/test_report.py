"""Reports: every plot present, images embedded, nothing referenced outside the page."""

from __future__ import annotations

import base64
from html.parser import HTMLParser

import polars as pl
import pytest

from pregate.cli import main
from pregate.simulator import sweep as sw
from pregate.simulator.synthetic import make_trace

EXPECTED_FIGURES = {"pareto-0", "breakdown", "usage", "transitions", "lookahead", "lru-curve", "hit-rate-per-layer",
                    "sim-vs-measured"}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    trace = make_trace(root / "t", seqs=3, prompt_len=4, new_tokens=8, layers=4, experts=8, top_k=1, seed=2)
    spec = sw.SweepSpec([str(trace)], {"speculation": ["none", "layer_minus_1"], "cache_policy": ["lru", "lfu"],
                                       "cache": ["25%", "50%"]}, source="test")
    sw.run_sweep(spec, root / "res", workers=1, progress=False)
    return root / "res"


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.refs, self.figures = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.imgs.append(attrs.get("src", ""))
        if tag == "figure":
            self.figures.append(attrs.get("id"))
        for name in ("src", "href", "data", "poster", "action", "srcset"):
            if name in attrs and tag != "img":
                self.refs.append((tag, name, attrs[name]))
        if tag in ("script", "link", "iframe", "object", "embed"):
            self.refs.append((tag, "", ""))


def test_report_embeds_every_plot_and_references_nothing_outside(results, tmp_path, capsys):
    measured = pl.DataFrame({"measured_s": [0.010, 0.020, 0.030], "simulated_s": [0.011, 0.019, 0.031],
                             "label": ["a", "b", "c"]})
    path = tmp_path / "measured.parquet"
    measured.write_parquet(path)
    out = tmp_path / "report"
    assert main(["report", str(results), "-o", str(out), "--measured", str(path)]) == 0
    assert "report.html" in capsys.readouterr().out
    text = (out / "report.html").read_text()
    refs = _Refs()
    refs.feed(text)
    assert set(refs.figures) == EXPECTED_FIGURES
    assert len(refs.imgs) == len(EXPECTED_FIGURES)
    for src in refs.imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert refs.refs == []
    lowered = text.lower()
    for bad in ("http://", "https://", "file:", "url("):
        assert bad not in lowered
    md = (out / "report.md").read_text()
    for fid in EXPECTED_FIGURES:
        assert f"(figures/{fid}.png)" in md
        assert (out / "figures" / f"{fid}.png").stat().st_size > 1000


def test_report_without_measurements_or_trace(results, tmp_path):
    from pregate.analysis.report import write_report

    frame = sw.read_results(results).with_columns(pl.lit(str(tmp_path / "gone")).alias("trace"))
    files = write_report(frame, tmp_path / "r")
    assert set(files.figures) == {"pareto-0", "breakdown"}
    assert "not readable here" in (tmp_path / "r" / "report.html").read_text()


def test_report_refuses_a_folder_without_results(tmp_path, capsys):
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no sweep results" in err


def test_no_offset_axes_and_flat_results_said_in_words(results, tmp_path):
    from pregate.analysis import plots
    from pregate.analysis.report import FLAT, results_sections

    frame = sw.read_results(results)
    fig = plots.plot_pareto(frame.with_columns(pl.col("mean_step_latency_s") + 1.32e-3))
    fig.canvas.draw()
    for axis in (fig.axes[0].xaxis, fig.axes[0].yaxis):
        assert axis.get_major_formatter().get_offset() == ""
    # every point within 1%: a sentence instead of the Pareto plot
    base = frame["mean_step_latency_s"].min()
    flat = frame.with_columns((base * (1 + pl.int_range(0, frame.height) * FLAT / (4 * frame.height)))
                              .alias("mean_step_latency_s"))
    sections = results_sections(flat)
    pareto = next(s for s in sections if s.title == "Latency against GPU memory")
    assert pareto.figures == [] and "within 1% of each other" in pareto.text
    spread_out = results_sections(frame)
    assert next(s for s in spread_out if s.title == "Latency against GPU memory").figures
