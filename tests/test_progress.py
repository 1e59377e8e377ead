"""Long work shows progress with a known total (so tqdm can estimate the time left); --quiet silences it."""

from __future__ import annotations

import argparse

import pytest

from pregate.cli import main


class CountingBar:
    """What validate needs of a tqdm bar: a total set up front and one update per executor run."""

    def __init__(self):
        self.total, self.n, self.total_when_first_updated = None, 0, None

    def refresh(self):
        pass

    def update(self, k=1):
        if self.total_when_first_updated is None:
            self.total_when_first_updated = self.total
        self.n += k


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    from pregate.executor.shapes import make_shape_trace

    return make_shape_trace(tmp_path_factory.mktemp("prog") / "tiny", "tiny", seqs=2, prompt_len=2, new_tokens=3)


def test_validate_progress_total_is_known_before_the_first_run_and_reached(trace):
    from pregate.executor.validate import validate

    bar = CountingBar()
    validate([str(trace)], "rtx3090", "cpu", quick=True, repeats=2, log=lambda m: None, bar=bar)
    # quick: 2 pairs x 1 cache size, batch 1; per round a warm-up, the resident run and both pairs
    assert bar.total_when_first_updated == bar.total == 2 * (1 + 1 + 2) == bar.n


def test_validate_quiet_prints_no_progress(trace, tmp_path, capsys):
    out = tmp_path / "v"
    assert main(["validate", str(trace), "--profile", "rtx3090", "--device", "cpu", "--quick", "-o", str(out),
                 "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "validate" not in captured.err and "run/s" not in captured.err and "points:" in captured.out


def test_validate_policy_flags_make_every_pair():
    from pregate.executor.cli_validate import _policy_pairs
    from pregate.executor.device import ExecutorError

    def ns(**kw):
        return argparse.Namespace(**{"policies": None, "speculation": None, "cache_policy": None, **kw})

    assert _policy_pairs(ns()) is None  # validate's own defaults
    assert _policy_pairs(ns(speculation="none,layer_minus_1", cache_policy="lru,lfu")) == \
        "none+lru,none+lfu,layer_minus_1+lru,layer_minus_1+lfu"
    assert _policy_pairs(ns(cache_policy="lfu")) == "none+lfu"
    assert _policy_pairs(ns(policies="none+lru")) == "none+lru"
    with pytest.raises(ExecutorError, match="not both"):
        _policy_pairs(ns(policies="none+lru", speculation="none"))
