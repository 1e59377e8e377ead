"""Report details: decoder transitions first, per-layer lines that do not hide each other, readable table
headers, and a validation scatter whose title carries the numbers printed on stdout."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import polars as pl  # noqa: E402

from pregate.analysis import plots  # noqa: E402


def test_transition_heatmaps_show_decoder_pairs_first():
    rows = [(stack, layer, 0, 1, 3) for stack in ("encoder", "decoder") for layer in range(4)]
    frame = pl.DataFrame(rows, schema=["stack", "layer", "src", "dst", "n"], orient="row")
    fig = plots.plot_transitions(frame, max_pairs=3)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["decoder 0 -> 1", "decoder 1 -> 2", "decoder 2 -> 3"]


def test_per_layer_hit_rate_lines_stay_visible_when_equal():
    # two cache sizes with the very same hit rates: their lines used to lie exactly on top of each other
    frame = pl.DataFrame({"cache_experts": [4, 4, 4, 8, 8, 8], "layer": [0, 1, 2] * 2, "hit_rate": [0.5] * 6})
    fig = plots.plot_hit_rate_per_layer(frame, n_objects=32)
    lines = [ln for ln in fig.axes[0].get_lines() if ln.get_label() in ("4 experts (12%)", "8 experts (25%)")]
    assert len(lines) == 2
    a, b = lines
    assert list(a.get_xdata()) != list(b.get_xdata())
    assert (a.get_marker(), a.get_linestyle()) != (b.get_marker(), b.get_linestyle())


def test_tables_have_word_headers():
    from pregate.analysis.report import _html_table, _md_table

    frame = pl.DataFrame({"top1_accuracy": [0.5], "most_frequent_top1": [0.25]})
    md, html = _md_table(frame), _html_table(frame)
    assert "top1 accuracy" in md and "most frequent top1" in md and "_" not in md.splitlines()[0]
    assert "<th>top1 accuracy</th>" in html


def test_validation_scatter_title_matches_the_summary(tmp_path):
    from pregate.executor import validate as v

    def point(i, cache="25%"):
        return {"trace": "t", "batch_size": 1, "speculation": "none", "cache_policy": "lru", "cache": cache,
                "measured_mean_s": 0.010 + i * 1e-3, "simulated_mean_s": 0.011 + i * 1.3e-3}

    points = [point(i) for i in range(4)]
    residents = [point(9, "resident"), point(10, "resident")]
    summary = {"points": 4, "median_abs_error": 0.1234, "p95_abs_error": 0.4949, "kendall_tau": 0.5}
    result = {"points": points, "resident": residents, "summary": summary, "device": "cpu", "profile": "p"}
    title = v.scatter_title(result)
    assert "4 settings + 2 all-resident" in title and "12.3%" in title and "49.5%" in title
    assert v.scatter_plot(result, tmp_path / "s.png") and (tmp_path / "s.png").stat().st_size > 0
