"""The CPU device's clock and the least-time-per-pass filters that make CPU timings repeatable."""

from types import SimpleNamespace

import pytest

from pregate.executor.device import ExecutorError, clock_name, now, step_clock


def test_step_clock_reads_the_threads_cpu_time_on_the_cpu_and_restores_the_wall_clock():
    import time

    assert clock_name() == "wall"
    with step_clock("cpu", None):
        assert clock_name() == "cpu"
        start = now()
        time.sleep(0.05)  # sleeping uses no CPU: the thread's clock barely moves
        assert now() - start < 0.02
    assert clock_name() == "wall"
    with step_clock("cuda", None):
        assert clock_name() == "wall"


def test_step_clock_refuses_the_cpu_clock_on_cuda_in_one_line():
    with pytest.raises(ExecutorError, match="on cuda use --clock wall"):
        with step_clock("cuda", "cpu"):
            pass


def test_fastest_pass_totals_sums_each_passes_least_time():
    from pregate.executor.calibrate import fastest_pass_totals

    def run(*dense):
        steps = [SimpleNamespace(dense_s=d, plan_s=1.0) for d in dense]
        return steps, {"dense_s": sum(dense), "plan_s": float(len(dense)), "blocks": 2 * len(dense)}

    totals = fastest_pass_totals([run(3.0, 1.0), run(1.0, 4.0)])
    assert totals["dense_s"] == 2.0 and totals["plan_s"] == 2.0 and totals["blocks"] == 4
    # runs that walked different passes: each phase's least total
    assert fastest_pass_totals([run(3.0, 1.0), run(1.0)])["dense_s"] == 1.0
