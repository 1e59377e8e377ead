"""Sweeps: same numbers as single simulations, resumable, deterministic, config errors in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from pregate.cli import main
from pregate.simulator import Settings
from pregate.simulator import sweep as sw
from pregate.simulator.synthetic import make_trace


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    return make_trace(tmp_path_factory.mktemp("sweep") / "t", seqs=3, prompt_len=4, new_tokens=8, layers=4,
                      experts=8, top_k=2, seed=3)


GRID = {"speculation": ["none", "layer_minus_1"], "cache_policy": ["lru", "lfu"], "cache": ["25%", "50%"],
        "compression": ["none", "int8"]}


def _spec(trace, grid=GRID):
    return sw.SweepSpec(traces=[str(trace)], grid=dict(grid), source="test")


def _raw_keys(folder: Path) -> list[str]:
    """Every key in every chunk file, duplicates included."""
    return [k for f in sw.chunk_files(folder) for k in pl.read_parquet(f, columns=["key"])["key"].to_list()]


def test_sweep_matches_individual_simulate_calls(trace, tmp_path, capsys):
    out = tmp_path / "res"
    outcome = sw.run_sweep(_spec(trace), out, workers=1, progress=False)
    assert (outcome.total, outcome.ran, outcome.skipped) == (16, 16, 0)
    frame = sw.read_results(out)
    assert frame.height == 16 and frame["key"].n_unique() == 16
    for row in frame.iter_rows(named=True):
        js = tmp_path / "one.json"
        argv = ["simulate", str(trace), "--json", str(js)]
        for name in ("speculation", "cache_policy", "cache", "compression"):
            argv += ["--" + name.replace("_", "-"), row[name]]
        assert main(argv) == 0
        expected = json.loads(js.read_text())
        for key, value in expected.items():
            if key == "settings":
                assert {k: row[k] for k in value} == value
            else:
                assert row[{"profile": "profile_name", "runtime": "runtime_name", "host": "host_name"}.get(key, key)] == value, key
    capsys.readouterr()
    # a rerun does nothing
    again = sw.run_sweep(_spec(trace), out, workers=1, progress=False)
    assert (again.ran, again.skipped) == (0, 16)


def test_pool_gives_byte_identical_points(trace, tmp_path):
    grid = {**GRID, "compression": ["none"]}
    sw.run_sweep(_spec(trace, grid), tmp_path / "a", workers=1, progress=False)
    sw.run_sweep(_spec(trace, grid), tmp_path / "b", workers=2, progress=False, in_process=False)
    a, b = sw.read_results(tmp_path / "a"), sw.read_results(tmp_path / "b")
    assert a.height == 8 and a.equals(b)


def test_interrupted_sweep_resumes_without_duplicates(trace, tmp_path, monkeypatch):
    out = tmp_path / "res"
    import pregate.simulator.sweep_point as sp

    real = sp.run_point  # the task runner's own reference
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(sp, "run_point", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        sw.run_sweep(_spec(trace), out, workers=1, progress=False)
    assert len(_raw_keys(out)) == 5  # the five finished points were kept
    monkeypatch.setattr(sp, "run_point", real)
    outcome = sw.run_sweep(_spec(trace), out, workers=1, progress=False)
    assert (outcome.ran, outcome.skipped) == (11, 5)
    keys = _raw_keys(out)
    assert len(keys) == len(set(keys)) == 16
    assert set(keys) == {p.key for p in sw.plan_sweep(_spec(trace)).points}


@pytest.mark.slow
def test_killed_subprocess_sweep_completes_on_rerun(tmp_path):
    # big enough to take a few seconds: the first chunk is written after about one
    trace = make_trace(tmp_path / "big", seqs=24, prompt_len=8, new_tokens=32, layers=6, experts=8, top_k=2, seed=1)
    out = tmp_path / "res"
    args = ["--trace", str(trace), "--speculation", "none,layer_minus_1,multi_layer,adaptive",
            "--cache-policy", "lru,lfu", "--cache", "10%,25%,50%", "-o", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "pregate", "sweep", *args, "--workers", "1", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not sw.chunk_files(out) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = len(_raw_keys(out))
    assert 0 < before < 24, "the sweep should have been killed midway"
    assert main(["sweep", *args, "--workers", "1", "--quiet"]) == 0
    keys = _raw_keys(out)
    assert len(keys) == len(set(keys)) == 24


def test_flags_make_axes_and_override_config(trace, tmp_path, capsys):
    cfg = tmp_path / "grid.toml"
    cfg.write_text(f'trace = "{trace}"\nspeculation = ["none", "layer_minus_1"]\ncache = [2, "50%"]\n'
                   'cache_policy = "lru"\nbatch_size = [1]\n')
    out = tmp_path / "res"
    assert main(["sweep", str(cfg), "--cache", "25%", "-o", str(out), "--workers", "1", "--quiet"]) == 0
    frame = sw.read_results(out)
    assert sorted(frame["speculation"].to_list()) == ["layer_minus_1", "none"]
    assert set(frame["cache"]) == {"25%"}
    assert "layer_minus_1 + lru" in capsys.readouterr().out
    assert main(["sweep", str(cfg), "-o", str(tmp_path / "r2"), "--dry-run"]) == 0
    assert "4 points" in capsys.readouterr().out


@pytest.mark.parametrize(
    "body, expected",
    [
        ('speculaton = ["none"]', "unknown key 'speculaton'"),
        ('speculation = ["none", "psychic"]', "unknown speculation policy 'psychic'"),
        ('cache_policy = ["lru", "lfuu"]', "did you mean 'lfu'"),
        ("cache = []", "axis 'cache' is empty"),
        ('cache = ["25 parsecs"]', "cache size"),
        ("batch_size = [0]", "batch_size"),
        ("[grid]\ncache = [1]", "unknown table [grid]"),
        ('profile = ["rtx9090"]', "unknown profile 'rtx9090'"),
        ("speculation = [", "not valid TOML"),
    ],
)
def test_malformed_config_is_refused_in_one_line(trace, tmp_path, capsys, body, expected):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'trace = "{trace}"\n{body}\n')
    assert main(["sweep", str(cfg), "-o", str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and expected in err
    assert not sw.chunk_files(tmp_path / "res")


def test_missing_trace_and_no_ahead_are_refused(tmp_path, capsys):
    assert main(["sweep", "--speculation", "none", "-o", str(tmp_path / "r")]) == 2
    assert "--trace" in capsys.readouterr().err
    flat = make_trace(tmp_path / "flat", seqs=1, prompt_len=2, new_tokens=2, layers=2, ahead=0)
    assert main(["sweep", "--trace", str(flat), "--speculation", "none,layer_minus_1", "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no 'ahead' column" in err


def test_keys_follow_trace_content_and_settings(trace, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in Path(trace).iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    a = sw.plan_sweep(_spec(trace)).points
    b = sw.plan_sweep(_spec(copy)).points
    assert [p.key for p in a] == [p.key for p in b]  # same bytes, same keys, wherever the trace lives
    other = make_trace(tmp_path / "other", seqs=3, prompt_len=4, new_tokens=8, layers=4, experts=8, top_k=2, seed=4)
    c = sw.plan_sweep(_spec(other)).points
    assert not {p.key for p in a} & {p.key for p in c}
    assert len({p.key for p in a}) == len(a) == 16
    assert sw.point_key("t", "p", Settings()) != sw.point_key("t", "p", Settings(seed=1))


@pytest.mark.slow  # starting a local Ray cluster takes 10-25 s
def test_ray_matches_local(trace, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'pregate[ray]')")
    grid = {**GRID, "compression": ["none"], "cache": ["50%"]}
    sw.run_sweep(_spec(trace, grid), tmp_path / "local", workers=1, progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        outcome = sw.run_sweep(_spec(trace, grid), tmp_path / "ray", ray_address="local", progress=False)
    finally:
        ray.shutdown()
    assert outcome.ran == 4
    assert sw.read_results(tmp_path / "local").equals(sw.read_results(tmp_path / "ray"))


def test_many_chunks_are_merged_without_losing_points(trace, tmp_path, monkeypatch):
    import pregate.simulator.sweep_store as store

    monkeypatch.setattr(store, "FLUSH_SECONDS", 0.0)  # one chunk per point (the writer reads the store's)
    out = tmp_path / "res"
    outcome = sw.run_sweep(_spec(trace), out, workers=1, progress=False)
    assert outcome.ran == 16
    files = sw.chunk_files(out)
    assert len(files) == 1  # 16 chunks merged at the end
    keys = _raw_keys(out)
    assert len(keys) == len(set(keys)) == 16
