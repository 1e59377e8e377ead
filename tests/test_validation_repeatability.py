"""bench/validation_repeatability.py: measured against measured, beside the model's own figures."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rep():
    spec = importlib.util.spec_from_file_location("validation_repeatability",
                                                  ROOT / "bench" / "validation_repeatability.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(tmp_path, name, means, summary=None, cache="25%"):
    points = [{"trace": "t", "batch_size": 1, "speculation": "none", "cache_policy": policy, "cache": cache,
               "buffering": "cache", "measured_mean_s": m} for policy, m in means.items()]
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"points": points, "summary": summary or {
        "median_abs_error": 0.1, "p95_abs_error": 0.2, "kendall_tau": 0.9}}))
    return str(path)


def test_two_runs_measured_against_each_other(rep, tmp_path):
    a = _record(tmp_path, "a", {"lru": 1.0, "lfu": 2.0, "fifo": 3.0, "s3fifo": 4.0})
    b = _record(tmp_path, "b", {"lru": 1.1, "lfu": 2.0, "fifo": 2.5, "s3fifo": 4.0, "only-in-b": 9.0})
    result = rep.repeatability([a, b])
    pair = result["pairs"][0]
    assert pair["points"] == 4  # the point only one run has is left out
    # both orders pooled: |b-a|/a and |a-b|/b for each point
    diffs = [0.1, 0.1 / 1.1, 0.0, 0.0, 0.5 / 3.0, 0.5 / 2.5, 0.0, 0.0]
    assert pair["median_abs_difference"] == pytest.approx(float(np.median(diffs)))
    assert pair["p95_abs_difference"] == pytest.approx(float(np.percentile(diffs, 95)))
    assert pair["kendall_tau"] == pytest.approx(1.0)  # the same order in both runs
    assert result["model_vs_measured"]["p95_abs_error"]["median"] == pytest.approx(0.2)
    text = rep.render(result)
    assert "measured vs measured" in text and "model vs measured" in text


def test_three_runs_give_every_pair_and_a_band(rep, tmp_path):
    a = _record(tmp_path, "a", {"lru": 1.0, "lfu": 2.0, "fifo": 3.0})
    b = _record(tmp_path, "b", {"lru": 3.0, "lfu": 2.0, "fifo": 1.0})  # the order reversed
    c = _record(tmp_path, "c", {"lru": 1.0, "lfu": 2.0, "fifo": 3.0})
    result = rep.repeatability([a, b, c])
    taus = sorted(p["kendall_tau"] for p in result["pairs"])
    assert len(result["pairs"]) == 3 and taus == pytest.approx([-1.0, -1.0, 1.0])
    band = result["measured_vs_measured"]["kendall_tau"]
    assert band["min"] == pytest.approx(-1.0) and band["max"] == pytest.approx(1.0)


def test_bad_records_are_refused_in_one_line(rep, tmp_path, capsys):
    a = _record(tmp_path, "a", {"lru": 1.0, "lfu": 2.0})
    other = _record(tmp_path, "other", {"lru": 1.0, "lfu": 2.0}, cache="50%")
    (tmp_path / "x.json").write_text("{not json")
    (tmp_path / "y.json").write_text(json.dumps({"hello": 1}))
    for argv, words in (([a], "at least two"), ([a, str(tmp_path / "missing.json")], "not found"),
                        ([a, str(tmp_path / "x.json")], "not JSON"), ([a, str(tmp_path / "y.json")], "no 'points'"),
                        ([a, other], "share no point")):
        with pytest.raises(SystemExit) as exc:
            rep.main(argv)
        assert words in str(exc.value) and "\n" not in str(exc.value)
