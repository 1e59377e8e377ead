"""The planner's cost per policy pair: the runtime profile's rows, how they price a run, and how they are measured."""

import dataclasses

import numpy as np
import pytest

from pregate.simulator import Settings, Simulation
from pregate.simulator.errors import ProfileError
from pregate.simulator.runtime import PlannerCost, load_runtime, planner_row, render_runtime
from pregate.simulator.synthetic import make_trace

ROWS = (PlannerCost("none", "lru", 2e-6, 1e-6, "measured: a"),
        PlannerCost("multi_layer", "lru", 40e-6, 9e-6, "measured: b"),
        PlannerCost("layer_minus_1", "lru", 30e-6, 12e-6, "measured: c"),
        PlannerCost("none", "lfu", 5e-6, 2e-6, "measured: d"))


def test_rows_round_trip_through_the_toml(tmp_path):
    rt = dataclasses.replace(load_runtime("pregate-eager"), planner_costs=ROWS)
    path = tmp_path / "rt.toml"
    path.write_text(render_runtime(rt))
    assert load_runtime(path).planner_costs == ROWS


@pytest.mark.parametrize("row,message", [
    ('speculation = "none"\ncaching = "lru"\nlayer_step = 1e-6\nsource = "x"', "needs exactly"),
    ('speculation = "none"\ncaching = "lru"\nlayer_step = -1e-6\nrequest = 0\nsource = "x"', "must be a number"),
    ('speculation = ""\ncaching = "lru"\nlayer_step = 1e-6\nrequest = 0\nsource = "x"', "non-empty strings"),
])
def test_malformed_rows_are_refused_in_one_line(tmp_path, row, message):
    rt = load_runtime("pregate-eager")
    path = tmp_path / "rt.toml"
    path.write_text(render_runtime(rt) + f"\n[[planner_cost]]\n{row}\n")
    with pytest.raises(ProfileError, match=message) as err:
        load_runtime(path)
    assert "\n" not in str(err.value)


def test_two_rows_for_one_pair_are_refused(tmp_path):
    rt = dataclasses.replace(load_runtime("pregate-eager"), planner_costs=ROWS[:1] * 2)
    path = tmp_path / "rt.toml"
    path.write_text(render_runtime(rt))
    with pytest.raises(ProfileError, match="two rows for none\\+lru"):
        load_runtime(path)


def test_unmeasured_pair_costs_the_dearest_row_of_its_caching_policy():
    assert planner_row((), "none", "lru") is None
    assert planner_row(ROWS, "layer_minus_1", "lru") == (ROWS[2], True)
    assert planner_row(ROWS, "learned", "lru") == (ROWS[1], False)  # dearest lru row
    assert planner_row(ROWS, "learned", "lfu") == (ROWS[3], False)  # the only lfu row
    assert planner_row(ROWS, "none", "fifo") == (ROWS[1], False)  # no fifo rows: the dearest of all


def _sim(tmp_path, settings, host_is_device):
    trace = make_trace(tmp_path / "t", seqs=3, prompt_len=3, new_tokens=5, layers=3)
    base = Simulation(trace, settings)
    rt = dataclasses.replace(base.runtime, planner_costs=ROWS, host_is_device=host_is_device)
    return base, Simulation(trace, settings, runtime=rt)


@pytest.mark.parametrize("host_is_device", [False, True])
def test_rows_price_the_pair_on_top_of_the_runtimes_own_time(tmp_path, host_is_device):
    settings = Settings(cache="25%", speculation="multi_layer", prefetch_gate="off")
    _, sim = _sim(tmp_path, settings, host_is_device)
    c = sim.costs
    priced = c.for_policy("lru", "multi_layer")
    if host_is_device:  # one thread: each layer step's serial time grows by the row, per request too
        requests = np.diff(sim.stream.ls_req_start)
        assert priced.dense_gpu == pytest.approx(c.dense_gpu + 40e-6 + 9e-6 * requests)
        assert priced.layer_step == c.layer_step and priced.expert_host == c.expert_host
    else:
        assert priced.layer_step == pytest.approx(c.layer_step + 40e-6)
        assert priced.expert_host == pytest.approx(c.expert_host + 9e-6)
        assert list(priced.dense_gpu) == list(c.dense_gpu)
    assert priced.planner_used.startswith("multi_layer+lru: measured: b")
    assert c.for_policy("lru", "multi_layer", all_resident=True).dense_gpu is c.dense_gpu
    # the dearer pair is slower, by at least its extra planner time on the layer steps alone
    none = sim.run(settings.replace(speculation="none"), bounds=False).summary
    multi = sim.run(settings, bounds=False).summary
    assert multi["planner_cost"].startswith("multi_layer+lru")
    assert none["planner_cost"].startswith("none+lru")
    unmeasured = sim.run(settings.replace(speculation="transition"), bounds=False).summary
    assert "transition+lru not measured: priced as multi_layer+lru" in unmeasured["planner_cost"]


def test_without_rows_nothing_changes(tmp_path):
    settings = Settings(cache="25%", speculation="multi_layer")
    base, _ = _sim(tmp_path, settings, False)
    assert base.costs.for_policy("lru", "multi_layer") == base.costs.for_policy("lru")
    assert "planner_cost" not in base.run(settings, bounds=False).summary


def test_fit_pair_recovers_known_costs_and_never_goes_negative():
    from pregate.executor.planner_cost import fit_pair

    runs = [{"layer_steps": ls, "requests": rq, "seconds": 3e-5 * ls + 7e-6 * rq}
            for ls, rq in ((100, 120), (100, 400), (50, 300))]
    a, c = fit_pair(runs)
    assert a == pytest.approx(3e-5) and c == pytest.approx(7e-6)
    # times falling with more requests would fit a negative per-request term: all goes per layer step
    runs = [{"layer_steps": 100, "requests": 100, "seconds": 2e-3}, {"layer_steps": 100, "requests": 300, "seconds": 1e-3}]
    assert fit_pair(runs) == (pytest.approx(1.5e-5), 0.0)


def test_the_planner_alone_does_the_executors_work(tmp_path):
    """Timed alone, the planner walks the same stream to the same counts the executor reports."""
    from pregate.executor.planner_cost import planner_alone
    from pregate.executor.run import TraceExecutor
    from pregate.executor.shapes import make_shape_trace

    ex = TraceExecutor(make_shape_trace(tmp_path / "s", "tiny", seqs=4, prompt_len=3, new_tokens=4), "cpu", "float32")
    settings = Settings(dtype="float32", speculation="layer_minus_1", cache="25%", batch_size=2)
    alone = planner_alone(ex, settings, groups=2, reps=1)
    rt = ex.run(settings, groups=2)
    totals = rt.phase_totals()
    rt.close()
    assert alone["layer_steps"] == totals["layer_steps"] and alone["copies"] == totals["copies"]
    assert alone["requests"] == totals["experts"] and alone["seconds"] > 0

