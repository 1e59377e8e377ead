"""Interrupting a real sweep subprocess: Ctrl-C ends it within 2 s keeping finished points, a second Ctrl-C ends
it at once, a SIGKILLed sweep leaves no worker behind, and a rerun completes with every point exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from pregate.cli import main
from pregate.simulator import sweep as sw
from pregate.simulator.synthetic import make_trace

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to find the workers")

AXES = ["--speculation", "none,layer_minus_1,multi_layer", "--cache-policy", "lru,lfu", "--cache", "10%,25%,50%,75%"]
POINTS = 3 * 2 * 4


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    # a few seconds of work for two workers: long enough to be interrupted midway
    return make_trace(tmp_path_factory.mktemp("intr") / "t", seqs=6, prompt_len=4, new_tokens=12, layers=4,
                      experts=8, top_k=2, seed=4)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a live process, None when it is gone (a zombie counts as gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = text.rsplit(")", 1)[1].split()[:2]
    return None if state in ("Z", "X") else (state, int(ppid))


def _descendants(root: int) -> set[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                parents[int(entry.name)] = st[1]
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


# The sweep run as a script whose points each take at least POINT_SLEEP seconds, in the parent and in every
# spawned worker (spawn re-imports the script as __mp_main__): however loaded the machine, the sweep is
# still running when the test interrupts it.
POINT_SLEEP = 0.25
SLOW_SWEEP = f"""
import time
import pregate.simulator.sweep_point as sp

_run_point = sp.run_point


def _slow_point(*args):
    time.sleep({POINT_SLEEP})
    return _run_point(*args)


sp.run_point = _slow_point  # where the workers' task runner looks it up

if __name__ == "__main__":
    import sys
    from pregate.cli import main

    sys.exit(main(sys.argv[1:]))
"""


def _start(trace, out: Path, axes=AXES, slow: bool = True) -> tuple[subprocess.Popen, set[int]]:
    """A sweep on two workers, once it has stored its first points and both workers run."""
    script = out.parent / "slow_sweep.py"
    script.write_text(SLOW_SWEEP)
    runner = [str(script)] if slow else ["-m", "pregate"]
    proc = subprocess.Popen([sys.executable, *runner, "sweep", "--trace", str(trace), *axes, "-o", str(out),
                             "--workers", "2", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    workers: set[int] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        workers |= _descendants(proc.pid)
        if sw.chunk_files(out) and len(workers) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the sweep ended before it could be interrupted: make the grid bigger"
    assert sw.chunk_files(out) and len(workers) >= 2
    return proc, workers


def _wait_gone(pids: set[int], seconds: float) -> set[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = {p for p in pids if _stat(p) is not None}
        if not left:
            return left
        time.sleep(0.02)
    return {p for p in pids if _stat(p) is not None}


def _rerun_completes(trace, out: Path) -> None:
    stored = [k for f in sw.chunk_files(out) for k in pl.read_parquet(f, columns=["key"])["key"].to_list()]
    assert 0 < len(set(stored)) < POINTS, "the interruption should have kept some points and not all"
    assert main(["sweep", "--trace", str(trace), *AXES, "-o", str(out), "--workers", "1", "--quiet"]) == 0
    frame = sw.read_results(out)
    assert frame.height == POINTS and frame["key"].n_unique() == POINTS
    raw = [k for f in sw.chunk_files(out) for k in pl.read_parquet(f, columns=["key"])["key"].to_list()]
    assert len(raw) == len(set(raw)) == POINTS  # compacted, no duplicate left on disk


def _cleanup(proc: subprocess.Popen, pids: set[int]) -> None:
    for pid in [proc.pid, *pids]:
        if _stat(pid) is not None:
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def test_ctrl_c_stops_the_sweep_and_its_workers_within_2s(trace, tmp_path, capsys):
    out = tmp_path / "res"
    proc, workers = _start(trace, out)
    try:
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the whole group gets it
        rc = proc.wait(timeout=10)
        took = time.monotonic() - sent
        err = proc.stderr.read().decode()
        assert rc == 130, err
        assert took < 2.0, f"took {took:.1f} s to stop"
        assert "Traceback" not in err and "rerun the same command" in err
        assert not _wait_gone(workers, 1.0), "workers left running"
    finally:
        _cleanup(proc, workers)
    _rerun_completes(trace, out)


@pytest.mark.slow  # a sweep subprocess with spawned workers: 4-13 s
def test_second_ctrl_c_stops_at_once(trace, tmp_path):
    out = tmp_path / "res"
    proc, workers = _start(trace, out)
    try:
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=10)
        took = time.monotonic() - sent
        assert rc == 130 and took < 2.0, (rc, took)
        assert not _wait_gone(workers, 1.0), "workers left running"
    finally:
        _cleanup(proc, workers)
    _rerun_completes(trace, out)


@pytest.mark.slow  # a sweep subprocess with spawned workers: 4-13 s
def test_workers_exit_when_the_sweep_is_killed(trace, tmp_path):
    out = tmp_path / "res"
    proc, workers = _start(trace, out)
    try:
        os.kill(proc.pid, signal.SIGKILL)  # the parent alone: nobody tells the workers
        proc.wait(timeout=10)
        left = _wait_gone(workers, 2.0)
        assert not left, f"orphaned workers: {sorted(left)}"
    finally:
        _cleanup(proc, workers)
    _rerun_completes(trace, out)


@pytest.mark.slow
def test_ctrl_c_does_not_wait_for_long_points(tmp_path):
    """Points of several seconds each: the queued and running ones are dropped, not finished first."""
    trace = make_trace(tmp_path / "big", seqs=32, prompt_len=8, new_tokens=64, layers=8, experts=8, top_k=2, seed=4)
    proc, workers = _start(trace, tmp_path / "res", ["--speculation", "multi_layer", "--cache", "10%,25%,50%,75%"],
                           slow=False)
    try:
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=60)
        took = time.monotonic() - sent
        assert rc == 130 and took < 2.0, f"exit {rc} after {took:.1f} s"
        assert not _wait_gone(workers, 1.0), "workers left running"
    finally:
        _cleanup(proc, workers)
