"""--uncertainty: bands over the profiles' ranges, paired comparisons, the value that decides an order."""

import json

import pytest

from pregate.simulator import Settings, Simulation
from pregate.simulator.errors import SimulatorError
from pregate.simulator.synthetic import make_trace
from pregate.simulator.uncertainty import band, deciding_value, holds, scenarios, varied


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    return make_trace(tmp_path_factory.mktemp("u") / "t", seqs=2, prompt_len=3, new_tokens=6, layers=3, seed=2)


def test_corners_bound_the_nominal_answer(trace):
    sim = Simulation(trace, Settings(cache="25%", uncertainty="corners"))
    s = sim.run(bounds=False).summary
    assert s["tokens_per_s_low"] < s["tokens_per_s"] < s["tokens_per_s_high"]
    assert s["mean_step_latency_s_low"] < s["mean_step_latency_s"] < s["mean_step_latency_s_high"]
    assert s["uncertainty_values"] == len(varied(sim.profile, sim.runtime)) > 10
    # N seeded samples lie inside the corners, and the same seed gives the same band
    a = band(sim, sim.settings, "12", seed=3)
    assert a == band(sim, sim.settings, "12", seed=3) and a != band(sim, sim.settings, "12", seed=4)
    assert s["tokens_per_s_low"] <= min(a["uncertainty_tokens_per_s"]) <= max(a["uncertainty_tokens_per_s"]) \
        <= s["tokens_per_s_high"]


def test_gpu_bound_has_fewer_uncertain_values(trace):
    eager = Simulation(trace, Settings(runtime="pregate-eager"))
    bound = Simulation(trace, Settings(runtime="gpu-bound"))
    assert len(varied(bound.profile, bound.runtime)) < len(varied(eager.profile, eager.runtime))
    fast, slow = scenarios(eager.profile, eager.runtime, "corners")
    assert fast.runtime["host.per_kernel"] < slow.runtime["host.per_kernel"]  # a cost: low is fast
    assert fast.profile["pcie.pinned_bandwidth"] > slow.profile["pcie.pinned_bandwidth"]  # a rate: high is fast
    assert "gpu.memory" not in fast.profile  # what fits is not a timing


def test_paired_comparison_and_the_deciding_value(trace):
    """A tiny cache against a large one: bandwidth decides; with it fixed the order holds."""
    sim = Simulation(trace, Settings())
    small, large = sim.settings.replace(cache="10%"), sim.settings.replace(cache="60%")
    b_small, b_large = band(sim, small, "corners"), band(sim, large, "corners")
    assert holds(b_large, b_small) and not holds(b_small, b_large)
    decided = deciding_value(sim, large, small)
    assert decided["key"] in {k for _, k, _ in varied(sim.profile, sim.runtime)}
    assert decided["gap_tokens_per_s"]["nominal"] > 0


def test_bad_mode_is_one_line(trace, capsys):
    from pregate.cli import main

    with pytest.raises(SimulatorError, match="--uncertainty 'lots'"):
        Simulation(trace, Settings(uncertainty="lots"))
    assert main(["simulate", str(trace), "--uncertainty", "lots"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_sweep_stores_bands_and_report_draws_them(trace, tmp_path):
    from pregate.analysis.report import write_report
    from pregate.simulator.sweep import SweepError, SweepSpec, plan_sweep, read_results, run_sweep

    plan = plan_sweep(SweepSpec([str(trace)], {"cache": ["25%", "50%"], "uncertainty": ["corners"]}))
    run_sweep(plan, tmp_path / "res", workers=1)
    frame = read_results(tmp_path / "res")
    assert frame["tokens_per_s_low"].is_not_null().all()
    assert all(len(json.loads(x)) == 2 for x in frame["uncertainty_tokens_per_s"])
    files = write_report(tmp_path / "res", tmp_path / "rep", traces=[], uncertainty=True)
    assert "bands" in files.figures and "How sure" in files.markdown.read_text()
    plain = tmp_path / "plain"
    run_sweep(plan_sweep(SweepSpec([str(trace)], {"cache": ["25%"]})), plain, workers=1)
    with pytest.raises(SweepError, match="no bands"):
        write_report(plain, tmp_path / "rep2", traces=[], uncertainty=True)
