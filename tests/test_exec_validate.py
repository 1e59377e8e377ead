"""Executor vs simulator: same decisions on a trace; calibrate and validate end to end; bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pregate.cli import main
from pregate.executor.run import TraceExecutor
from pregate.executor.shapes import make_shape_trace
from pregate.simulator.api import Simulation
from pregate.simulator.replay import replay_general
from pregate.simulator.settings import Settings


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    return make_shape_trace(tmp_path_factory.mktemp("exec") / "tiny", "tiny", seqs=4, prompt_len=4, new_tokens=6)


@pytest.fixture(scope="module")
def executor(trace):
    return TraceExecutor(trace, "cpu")


@pytest.fixture(scope="module")
def profile(tmp_path_factory, trace):
    path = tmp_path_factory.mktemp("cal") / "cpu.toml"
    assert main(["calibrate", "--device", "cpu", "--quick", "-o", str(path), "--trace", str(trace)]) == 0
    return path


def _replay_decisions(executor, settings):
    """The simulator's own parts, walked by its fast replay, with every decision logged."""
    sim = Simulation(None, settings, stream=executor.stream(settings.batch_size))
    cache, planner, _, _ = sim._parts(settings)
    log = []
    plan_one = planner.plan

    def plan(ls):
        p = plan_one(ls)
        log.append((ls, [o for o, _ in p.hits], [(o, c) for o, _, c in p.misses] + [(o, False) for o, _ in p.cpu],
                    list(p.prefetches), list(p.evicted)))
        return p

    planner.plan = plan
    counts = replay_general(sim.stream, cache, planner, 1, 1)
    return log, counts


@pytest.mark.parametrize("settings", [
    Settings(cache="25%"),
    Settings(cache="8", speculation="layer_minus_1", batch_size=2),
    Settings(cache="6", speculation="multi_layer", cache_policy="lfu", per_layer=True),
    Settings(cache="5", speculation="eam", cache_policy="least-stale", compression="int4", batch_size=2),
    Settings(cache="10", speculation="oracle", cache_policy="belady"),
    Settings(cache="5", speculation="transition", buffering="cpu_compute"),
    Settings(cache="7", speculation="adaptive", cache_policy="pinned-hot", compression="low-precision-on-miss"),
    Settings(cache="8", buffering="static-layers", speculation="layer_minus_1"),
    Settings(cache="6", buffering="static-hot", batch_size=2),
    Settings(cache="6", buffering="cpu-or-fetch", speculation="layer_minus_1", compression="int8"),
], ids=lambda s: f"{s.speculation}-{s.cache_policy}-{s.cache}-{s.buffering}-b{s.batch_size}")
def test_executor_makes_the_replays_decisions(executor, settings):
    runtime = executor.run(settings, record=True, poison=True, warmup=0)
    mine = [(d.ls, d.hits, d.misses, d.prefetches, d.evicted) for d in runtime.decisions]
    log, counts = _replay_decisions(executor, settings)
    assert mine == log
    s = runtime.summary()
    # no clock in the replay: its hits are the executor's hits plus late hits (none on the cpu)
    assert (s["hits"] + s["late_hits"], s["misses"], s["prefetches"], s["evictions"], s["wasted_prefetches"]) == \
        (counts.hits, counts.misses, counts.prefetches, counts.evictions, counts.wasted_prefetches)
    # and the simulator's public replay agrees
    public = Simulation(None, settings, stream=executor.stream(settings.batch_size)).replay(settings, fast=False)
    assert (public.hits, public.misses) == (counts.hits, counts.misses)


def test_quantisation_round_trip():
    from pregate.executor import quant
    from pregate.tracer.adapters.base import bytes_per_dtype

    w = torch.randn(64 * 40)
    for form, tol in (("int8", 0.01), ("int4", 0.2)):
        buf = quant.quantize(w, form)
        assert buf.numel() == quant.packed_nbytes(w.numel(), form) == bytes_per_dtype(w.numel())[form]
        out = torch.empty_like(w)
        quant.dequantize_into(buf, out, form)
        assert float((out - w).norm() / w.norm()) < tol


def test_stats():
    from pregate.executor.stats import kendall_tau, ks_statistic

    assert ks_statistic([1, 2, 3], [1, 2, 3]) == 0
    assert ks_statistic([1, 2], [5, 6]) == 1
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    assert kendall_tau([1, 2, 3], [1, 1, 2]) == pytest.approx(2 / np.sqrt(6))  # tau-b with a tie


def test_calibrate_writes_a_profile_the_simulator_loads(profile, trace):
    from pregate.executor.calibrate import runtime_path
    from pregate.simulator.profile import load_profile
    from pregate.simulator.runtime import load_runtime

    p = load_profile(profile)
    assert p.schema == "pregate.profile/2" and p.expert_table(64, 128) is not None
    runtime = load_runtime(runtime_path(profile), p)
    # the trace's own dense block was timed at two contexts, and the simulator prices that trace with it
    sim = Simulation(trace, Settings(profile=str(profile), runtime=str(runtime_path(profile))))
    assert "the executor's dense block" in sim.costs.used_dense_table
    tables = p.dense_table(64, sim.stream.meta.dense_bytes_per_layer / 4, "float32")
    assert len(tables) == 2
    # the trace's block was also timed inside the executor's loop: the runtime's, pricing the host's part
    issue = runtime.block_issue(64, sim.stream.meta.dense_bytes_per_layer / 4)
    assert issue is not None and issue.seconds > 0
    # on the cpu one thread computes and issues: the block costs the larger of its table and its time in the loop
    assert runtime.host_is_device and sim.costs.dense_host[0] == 0
    assert sim.costs.dense_gpu[0] >= issue.seconds * 0.999
    assert "torch" in p.description and p["pcie.copy_engines"] == 1
    text = profile.read_text()
    assert "measured by pregate calibrate on" in text
    details = json.loads(profile.with_suffix(".calibration.json").read_text())
    assert details["environment"]["torch"] == torch.__version__
    # the present host's rates, measured, and usable as --host with another GPU's profile
    for key in ("cpu.memory_bandwidth", "cpu.flops", "cpu.bf16_flops", "cpu.threads", "cpu.dispatch"):
        assert p.entries[key].kind == "measured" and p[key] > 0, key
    assert p["cpu.threads"] == details["host_cpu"]["threads"]
    from pregate.simulator.hosts import with_host

    priced = with_host(load_profile("rtx3090"), str(profile))
    assert priced["cpu.memory_bandwidth"] == p["cpu.memory_bandwidth"] and priced.host_name.endswith("[cpu]")


def test_validate_quick_end_to_end(trace, profile, tmp_path):
    out = tmp_path / "v"
    assert main(["validate", str(trace), "--profile", str(profile), "--device", "cpu", "--quick", "-o", str(out)]) == 0
    result = json.loads((out / "validation.json").read_text())
    s = result["summary"]
    assert s["points"] == 2 and s["counts_agree"]
    for key in ("median_abs_error", "p95_abs_error", "kendall_tau"):
        assert key in s
    point = result["points"][0]
    for key in ("measured_mean_s", "simulated_p95_s", "rel_error_p50", "ks"):
        assert point[key] is not None
    assert (out / "points.csv").read_text().count("\n") == 3 + 1  # 2 points + 1 resident + header


def test_calibrate_measures_the_executors_host_time_in_its_loop(profile):
    details = json.loads(profile.with_suffix(".calibration.json").read_text())
    over = details["executor_overheads"]
    runs = over["runs"]
    # every run walked the same stream; the offloaded ones issued copies, the resident ones none
    assert {r["layer_steps"] for r in runs.values()} == {runs["resident b1"]["layer_steps"]}
    assert runs["resident b8"]["copies"] == 0 and runs["none+lru 25% b8"]["copies"] > runs["none+lru 100% b1"]["copies"]
    for key in ("layer_step", "resident_layer_step", "copy_issue", "router_sync"):
        assert over[key] >= 0.0
    from pregate.executor.calibrate import runtime_path
    from pregate.simulator.runtime import load_runtime

    text = runtime_path(profile).read_text()
    assert "layer_step = {" in text and "copy_issue = {" in text
    assert "layer_step" not in profile.read_text()  # host costs are the runtime's, not the hardware's
    # on the cpu one thread computes and issues: the loop's host time adds to the tables' compute
    rt = load_runtime(runtime_path(profile))
    assert rt.host_is_device
    assert rt["host.expert_issue"] > 0 and "inside the executor's run loop" in rt.entries["host.expert_issue"].source
    assert rt.entries["host.per_block"].kind == "derived" and "block_issue" in rt.entries["host.per_block"].source
    store = details["copies_from_a_large_store"]
    assert store["copies"] > 0 and store["bandwidth_Bps"] > 0 and store["store_bytes"] > store["chunk_bytes"]


def test_validate_skips_a_point_that_cannot_run(trace, profile, tmp_path, monkeypatch):
    from pregate.executor.device import ExecutorError
    from pregate.executor.validate import validate

    real_run = TraceExecutor.run

    def run(self, settings, **kw):
        if settings.speculation == "layer_minus_1":
            raise ExecutorError("a cache of 3 experts does not fit in the free GPU memory")
        return real_run(self, settings, **kw)

    monkeypatch.setattr(TraceExecutor, "run", run)
    result = validate([str(trace)], str(profile), "cpu", quick=True, log=lambda m: None)
    assert result["summary"]["points"] == 1 and result["summary"]["skipped"] == 1
    assert result["skipped"][0]["speculation"] == "layer_minus_1"
    assert "does not fit" in result["skipped"][0]["reason"]


def test_validate_rounds_keep_each_points_fastest(trace, profile):
    from pregate.executor.validate import validate

    result = validate([str(trace)], str(profile), "cpu", quick=True, repeats=2, log=lambda m: None)
    for point in result["points"] + result["resident"]:
        rounds = point["measured_mean_s_rounds"]
        # each step's least time over the rounds: never above the fastest round's mean
        assert len(rounds) == 2 and point["measured_mean_s"] <= min(rounds) * (1 + 1e-12)
        assert point["measured_from"] == "each step's least latency over 2 rounds"
        assert "_simulated_steps" not in point


def test_validate_rounds_run_every_trace_and_batch_size_in_turn(trace, profile, monkeypatch):
    """A point's rounds lie apart: round 2 of any setting comes after round 1 of every setting."""
    from pregate.executor.validate import validate

    calls = []
    run = TraceExecutor.run

    def logged(self, settings, **kw):
        calls.append((settings.batch_size, settings.buffering, settings.speculation, settings.cache))
        return run(self, settings, **kw)

    monkeypatch.setattr(TraceExecutor, "run", logged)
    result = validate([str(trace)], str(profile), "cpu", quick=True, repeats=2, batch_sizes=[1, 2],
                      log=lambda m: None)
    first, second = calls[:len(calls) // 2], calls[len(calls) // 2:]
    assert first == second and {c[0] for c in first} == {1, 2}  # both batch sizes in each round
    # each batch size's turn in a round: an unmeasured all-resident run, then its points
    b2 = [c[0] for c in first].index(2)
    assert first[0][1] == first[1][1] == first[b2][1] == first[b2 + 1][1] == "resident"
    assert len(result["points"]) + len(result["resident"]) == len(first) - 2
    # each point still keeps its fastest round, whichever group ran between its rounds
    assert all(len(p["measured_mean_s_rounds"]) == 2 for p in result["points"] + result["resident"])


def test_fastest_steps_takes_each_steps_least_time():
    from pregate.executor.validate import fastest_steps

    assert fastest_steps([[3.0, 1.0, 2.0], [1.0, 4.0, 2.5]]) == [1.0, 1.0, 2.0]
    assert fastest_steps([[1.0, 2.0], [1.0]]) is None  # rounds that walked different steps


def test_closed_runtime_frees_its_slots_and_keeps_its_figures(executor):
    rt = executor.run(Settings(cache="50%"))
    before = rt.summary()
    rt.close()
    assert rt.pool.data is None and rt.pool.buffers == []
    assert rt.summary() == before


def test_execute_trace_json(trace, tmp_path):
    out = tmp_path / "e.json"
    assert main(["execute", "--trace", str(trace), "--device", "cpu", "--speculation", "layer_minus_1",
                 "--cache-policy", "lru", "--cache", "50%", "--compare", "--json", str(out)]) == 0
    s = json.loads(out.read_text())
    for key in ("tokens", "steps", "hits", "late_hits", "misses", "bytes_moved", "mean_step_latency_s",
                "p50_step_latency_s", "p95_step_latency_s", "tokens_per_s", "stall_share"):
        assert key in s
    assert s["compare"]["hits"] + s["compare"]["late_hits"] == s["hits"] + s["late_hits"]


def test_execute_model_json(tmp_path):
    out = tmp_path / "m.json"
    assert main(["execute", "--model", "tiny-mixtral", "--random-init", "--device", "cpu", "--cache", "4",
                 "--max-new-tokens", "3", "--limit", "1", "--json", str(out)]) == 0
    s = json.loads(out.read_text())
    assert len(s["generated"]) == 1 and len(s["generated"][0]) == 3


def _one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    return err


def test_bad_input_is_refused_in_one_line(capsys, trace, profile, tmp_path):
    err = _one_line_error(capsys, ["execute", "--trace", str(trace), "--device", "tpu"])
    assert "unknown device 'tpu'" in err
    _one_line_error(capsys, ["calibrate", "--device", "gpu", "-o", str(tmp_path / "x.toml")])
    bad = tmp_path / "bad.toml"
    bad.write_text(profile.read_text().replace('unit = "B/s"', 'unit = "GB/s"', 1))
    err = _one_line_error(capsys, ["validate", str(trace), "--profile", str(bad), "--device", "cpu", "--quick"])
    assert "unit" in err
    small = tmp_path / "small.toml"
    text = profile.read_text()
    line = next(l for l in text.splitlines() if l.startswith("memory = "))
    small.write_text(text.replace(line, line.split("value = ")[0] + 'value = 1000, unit = "B", kind = "measured", source = "test" }'))
    err = _one_line_error(capsys, ["validate", str(trace), "--profile", str(small), "--device", "cpu", "--quick"])
    assert "more than" in err
    err = _one_line_error(capsys, ["execute", "--trace", str(trace), "--device", "cpu", "--cache", "100%",
                                   "--profile", str(small)])
    assert "more than" in err
    _one_line_error(capsys, ["execute", "--trace", str(trace), "--device", "cpu", "--speculation", "psychic"])


def test_a_validation_at_another_load_than_its_calibration_says_so(tmp_path):
    from pregate.executor.validate import calibration_load, load_note

    profile = tmp_path / "cpu.toml"
    profile.write_text("")
    assert calibration_load(profile) is None  # no calibration record beside it: nothing to compare
    (tmp_path / "cpu.calibration.json").write_text(json.dumps({"environment": {"load_average": 0.5,
                                                                               "load_average_end": 0.7}}))
    cal = calibration_load(profile)
    assert cal == {"start": 0.5, "end": 0.7}
    alike = {"load_average": {"start": 1.0, "end": 1.2, "calibration": cal}}
    assert load_note(alike) is None
    busy = {"load_average": {"start": 2.4, "end": 2.6, "calibration": cal}}
    note = load_note(busy, cores=2)
    assert note.startswith("note: calibrated at load average 0.6, validated at 2.5 on 2 cores") and "\n" not in note
    assert load_note({"load_average": {"start": 2.5, "end": None, "calibration": None}}) is None


def test_the_in_loop_block_time_is_the_decode_passes_least():
    """Prefill passes (several tokens a block) stay out of the one-token block time; each pass keeps its least."""
    from types import SimpleNamespace as S

    from pregate.executor.calibrate import decode_block_seconds

    def run(prefill, *decode):
        return [S(decode=False, dense_s=prefill, blocks=2)] + [S(decode=True, dense_s=d, blocks=2) for d in decode]

    runs = [run(9.0, 2.0, 3.0), run(8.0, 2.5, 2.2)]
    assert decode_block_seconds(runs) == pytest.approx((2.0 + 2.2) / 4)
