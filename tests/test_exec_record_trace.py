"""pregate execute --record-trace: the routing an offloaded run saw, as a trace equal to pregate trace's."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pregate.cli import main
from pregate.traces import open_trace, validate_trace

COMMON = ["--random-init", "--limit", "5", "--max-new-tokens", "6", "--batch-size", "2"]


def frame(path) -> pl.DataFrame:
    return open_trace(path).collect().with_columns(pl.col("stack").cast(pl.String), pl.col("phase").cast(pl.String))


@pytest.mark.slow
@pytest.mark.parametrize("model,policy,exact", [
    ("tiny-mixtral", ["--speculation", "layer_minus_1", "--cache-policy", "lru"], True),
    # The small MoE's offloaded expert arithmetic is not bit-identical to its own forward in
    # prefill (float32 rounding of the gathered matmul): a stored probability can land one
    # 10-bit rounding step away. Everything else is equal.
    ("pregate-moe-tiny", ["--speculation", "multi_layer", "--cache-policy", "lfu"], False),
])
def test_recorded_trace_equals_pregate_trace(tmp_path, capsys, model, policy, exact):
    traced, recorded = tmp_path / "traced", tmp_path / "recorded"
    assert main(["trace", "--model", model, *COMMON, "--max-prompt-tokens", "64", "--out", str(traced), "--quiet"]) == 0
    assert main(["execute", "--model", model, *COMMON, "--device", "cpu", "--cache", "40%", *policy,
                 "--record-trace", str(recorded)]) == 0
    out = capsys.readouterr().out
    assert f"recorded trace {recorded}" in out
    validate_trace(recorded)
    a, b = frame(traced), frame(recorded)
    assert a.height > 0 and a.columns == b.columns
    assert a.height == b.height
    # row for row, every column (the ahead pre-gating signal included)
    if exact:
        assert a.equals(b)
    else:
        assert a.drop("probs").equals(b.drop("probs"))
        pa = np.array(a["probs"].to_list()), np.array(b["probs"].to_list())
        np.testing.assert_allclose(pa[0], pa[1], rtol=2.0**-9)
        assert (pa[0] != pa[1]).sum() <= max(2, a.height // 200)
    ma, mb = open_trace(traced).meta, open_trace(recorded).meta
    assert (ma.stacks, ma.bytes_per_expert, ma.dense_bytes_per_layer, ma.ahead_distance) == \
        (mb.stacks, mb.bytes_per_expert, mb.dense_bytes_per_layer, mb.ahead_distance)
    assert mb.extra["recorded_by"] == "pregate execute --record-trace"


def test_record_trace_refused_with_a_trace_and_on_an_existing_folder(tmp_path, capsys):
    sample = "traces/samples/pregate-moe-tiny"
    assert main(["execute", "--trace", sample, "--record-trace", str(tmp_path / "r")]) == 2
    assert "--record-trace records a model's routing" in capsys.readouterr().err
    existing = tmp_path / "e"
    assert main(["trace", "--model", "tiny-mixtral", "--random-init", "--limit", "1", "--max-new-tokens", "2",
                 "--out", str(existing), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["execute", "--model", "tiny-mixtral", "--random-init", "--limit", "1", "--max-new-tokens", "2",
                 "--record-trace", str(existing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(existing) in err[0]
