"""CPU-or-GPU placements: static ones move nothing after warm-up, cpu-or-fetch picks the faster side,
every driver makes the same decisions, and the executor computes what the all-resident run computes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings as hsettings, strategies as st

from pregate.executor.device import ExecutorError
from pregate.executor.run import OffloadedModel, TraceExecutor, load
from pregate.executor.shapes import make_shape_trace
from pregate.simulator import Settings, Simulation
from pregate.simulator.errors import SimulatorError
from pregate.simulator.policies.placement import (SideClock, SideTiming, hot_objects, static_layer_objects,
                                                  static_layer_split)
from pregate.simulator.synthetic import make_trace
from pregate.traces import open_trace

PLACEMENTS = ("cpu_compute", "static-layers", "static-hot", "cpu-or-fetch")


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    path = make_trace(tmp_path_factory.mktemp("pl") / "p", seqs=4, prompt_len=3, new_tokens=8, layers=4,
                      experts=8, top_k=2, ahead=3, encoder_layers=2, seed=5)
    return open_trace(path)


def test_static_layer_split_is_n_cpu_moe():
    assert static_layer_split(32, 8, 28 * 8) == (list(range(4)), list(range(4, 32)))
    assert static_layer_split(32, 8, 28 * 8 + 7) == (list(range(4)), list(range(4, 32)))  # whole layers only
    assert static_layer_split(4, 8, 0) == ([0, 1, 2, 3], [])
    assert static_layer_split(4, 8, 1000) == ([], [0, 1, 2, 3])
    with pytest.raises(SimulatorError):
        static_layer_split(4, 0, 8)


def test_static_layers_pins_the_last_layers_of_each_stack(trace):
    sim = Simulation(trace, Settings())
    layout = sim.stream.layout
    pinned = static_layer_objects(layout, 16)  # 8 per stack: the last layer of each
    layers = sorted({layout.obj_layer[o] for o in pinned})
    last = [max(g for g, s in enumerate(layout.stacks) if s == name) for name in dict.fromkeys(layout.stacks)]
    assert layers == sorted(last) and len(pinned) == 16


def test_static_hot_counts_on_the_training_split_only(trace):
    sim = Simulation(trace, Settings())
    stream = sim.stream
    objs, note = hot_objects(stream, 5, seed=0)
    assert len(objs) == 5 and "2 of 4 sequence groups" in note
    # another seed splits differently; the count is over the training groups' tokens, most first
    import numpy as np

    from pregate.simulator.policies.placement import training_groups

    groups = training_groups(stream, 0)
    train = np.isin(stream.pass_group, groups)[stream.ls_pass]
    mask = np.repeat(train, np.diff(stream.ls_req_start))
    counts = np.bincount(stream.req_obj[mask], weights=stream.req_tokens[mask], minlength=stream.layout.n_objects)
    assert min(counts[objs]) >= max(np.delete(counts, objs))


@pytest.mark.parametrize("buffering", ["static-layers", "static-hot"])
@pytest.mark.parametrize("spec", ["none", "layer_minus_1", "oracle"])
def test_static_placement_moves_no_bytes_after_warm_up(trace, buffering, spec):
    settings = Settings(buffering=buffering, speculation=spec, cache="40%", batch_size=2)
    sim = Simulation(trace, settings)
    counts = sim.replay(fast=False)
    outcome, cache = sim.timed(settings)
    assert counts.bytes_moved == 0 and outcome.bytes_moved == 0
    assert counts.prefetches == counts.evictions == 0 and cache.counts.admissions == 0
    assert counts.hits > 0 and counts.misses > 0  # some experts on each side
    assert cache.counts.cpu == counts.misses  # every miss ran on the CPU
    assert set(cache.state) == set(cache.pinned) and cache.capacity == len(cache.pinned)
    assert len(cache.pinned) <= sim.capacity(settings)


def test_static_placement_refuses_a_per_layer_cache(trace):
    with pytest.raises(SimulatorError, match="drop --per-layer"):
        Simulation(trace, Settings(buffering="static-layers", per_layer=True, cache="50%")).replay()


def test_cpu_compute_fills_its_cache(trace):
    settings = Settings(buffering="cpu_compute", cache="25%")
    sim = Simulation(trace, settings)
    counts = sim.replay(fast=False)
    _, cache = sim.timed(settings)
    assert counts.hits > 0 and cache.counts.admissions > 0
    assert counts.bytes_moved == cache.counts.admissions * sim.expert_bytes


_timing = st.builds(
    lambda cpu, gpu, copy, engines, steps: SideTiming(cpu, gpu, copy, engines, steps),
    st.lists(st.floats(1e-5, 1e-1), min_size=9, max_size=9), st.lists(st.floats(1e-6, 1e-2), min_size=9, max_size=9),
    st.floats(1e-4, 5e-2), st.integers(1, 3), st.lists(st.floats(0.0, 2e-2), min_size=12, max_size=12))


@given(timing=_timing, steps=st.lists(st.lists(st.integers(0, 8), max_size=5), min_size=1, max_size=12),
       admit=st.lists(st.booleans(), min_size=60, max_size=60))
@hsettings(max_examples=200, deadline=None, derandomize=True)
def test_cpu_or_fetch_never_picks_the_slower_side(timing, steps, admit):
    """By the cost model's own numbers, whatever the link's queue and the CPU's backlog."""
    clock = SideClock(timing)
    k = 0
    for ls, tokens in enumerate(steps):
        for n in tokens:
            cpu, copy = clock.sides(n)
            assert clock.choose_cpu(n) == (cpu <= copy)
            if admit[k % len(admit)] and clock.link_idle():
                clock.admitted()  # a background copy: the next choices see a busier link
            k += 1
        clock.end(ls)


def test_cpu_or_fetch_copies_when_the_cpu_is_slow(trace):
    """The same trace, a host 1000x slower: every miss is copied; 1000x faster: none is."""
    import dataclasses

    for scale, copied in ((1e3, True), (1e-3, False)):
        settings = Settings(buffering="cpu-or-fetch", cache="25%")
        sim = Simulation(trace, settings)
        sim.costs = dataclasses.replace(sim.costs, expert_cpu=[t * scale for t in sim.costs.expert_cpu])
        cache, planner, _, _ = sim._parts(settings)
        plans = [planner.plan(ls) for ls in range(sim.stream.n_layer_steps)]
        n_copied = sum(len(p.misses) for p in plans)
        n_cpu = sum(len(p.cpu) for p in plans)
        assert (n_copied > 0 and n_cpu == 0) if copied else (n_copied == 0 and n_cpu > 0)


@pytest.mark.parametrize("buffering", PLACEMENTS)
@pytest.mark.parametrize("spec", ["none", "layer_minus_1"])
def test_replay_and_timed_run_agree_on_placements(trace, buffering, spec):
    settings = Settings(buffering=buffering, speculation=spec, cache="30%", batch_size=2)
    sim = Simulation(trace, settings)
    counts = sim.replay(fast=False)
    outcome, cache = sim.timed(settings)
    c = cache.counts
    assert (c.hits, c.misses, c.prefetches, c.evictions) == (counts.hits, counts.misses, counts.prefetches,
                                                            counts.evictions)
    s = sim.run(settings, bounds=False).summary
    assert s["hits"] + s["late_hits"] + s["misses"] == s["requests"]
    assert sim.timed(settings)[0].steps == outcome.steps  # same inputs, same outcome


def test_timed_engine_equals_simpy_on_placements(trace):
    from pregate.simulator.engine import run_timed

    for buffering in PLACEMENTS:
        settings = Settings(buffering=buffering, speculation="layer_minus_1", cache="30%", batch_size=2)
        sim = Simulation(trace, settings)
        runs = []
        for reference in (False, True):
            cache, planner, buf, comp = sim._parts(settings)
            out = run_timed(sim.stream, sim.costs, planner, cache, demand_dtype=sim.gpu_dtype,
                            prefetch_dtype=sim.gpu_dtype, copy_engines=1, reference=reference)
            runs.append((out.total_s, out.bytes_moved, out.late_hits, [s.latency_s for s in out.steps]))
        assert runs[0] == runs[1], buffering


# ---- the executor ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    path = make_shape_trace(tmp_path_factory.mktemp("plx") / "tiny", "tiny", seqs=4, prompt_len=4, new_tokens=4)
    return TraceExecutor(path, "cpu")


def _run_checking_weights(executor, settings):
    """Run ``settings``; every expert computed (from a slot, a bypass buffer or the host) must give
    bit for bit what the expert's own full-precision weights give on the same input."""
    rt = executor.runtime(settings)
    compute = rt.compute
    checked = [0]

    def hooked(work, x):
        y = compute(work, x)
        want = rt.spec.compute(x, rt.spec.views(rt.store.full[work.obj]))
        assert torch.equal(y, want), f"expert {work.obj} (slot {work.slot}) computed with other weights"
        checked[0] += 1
        return y

    rt.compute = hooked
    stream = executor.stream(settings.batch_size)
    executor._walk(stream, executor.synthetic(stream), rt)
    return rt, checked[0]


@pytest.mark.parametrize("buffering", PLACEMENTS)
def test_executor_placements_compute_with_the_experts_own_weights(executor, buffering):
    """On a trace the synthetic model's experts are summed in the plan's order, so the activations
    of later layers differ from the all-resident run's in the last bits; what must be exact is each
    expert's arithmetic on its input (the live models' tokens are checked in test_exec_offload)."""
    rt, checked = _run_checking_weights(executor, Settings(buffering=buffering, cache="30%", speculation="none"))
    s = rt.summary()
    assert checked == s["requests"] == s["hits"] + s["late_hits"] + s["misses"] and s["hits"] > 0
    if buffering.startswith("static"):
        assert s["bytes_moved"] == 0 and s["evictions"] == 0  # pinned at start: the load is warm-up
    else:
        assert s["bytes_moved"] > 0  # CPU-run misses were copied in behind


@pytest.mark.parametrize("buffering", PLACEMENTS)
def test_executor_makes_the_replays_decisions_on_placements(executor, buffering):
    settings = Settings(buffering=buffering, cache="30%", speculation="layer_minus_1", batch_size=2)
    rt = executor.run(settings, record=True, warmup=0)
    sim = Simulation(None, settings, stream=executor.stream(settings.batch_size))
    cache, planner, _, _ = sim._parts(settings)
    log = []
    for ls in range(sim.stream.n_layer_steps):
        p = planner.plan(ls)
        log.append((ls, [o for o, _ in p.hits], [(o, c) for o, _, c in p.misses] + [(o, False) for o, _ in p.cpu],
                    list(p.prefetches), list(p.evicted), list(p.admits)))
        for obj in [o for o, _, c in p.misses if c] + p.admits + p.prefetches:
            cache.landed(obj)
    mine = [(d.ls, d.hits, d.misses, d.prefetches, d.evicted, d.admits) for d in rt.decisions]
    assert mine == log
    counts = sim.replay(settings, fast=False)
    s = rt.summary()
    assert s["bytes_moved"] == counts.bytes_moved  # on the cpu no copy is ever cancelled
    assert (s["hits"] + s["late_hits"], s["misses"]) == (counts.hits, counts.misses)


def test_live_model_runs_static_layers_and_refuses_what_needs_a_trace():
    loaded = load("tiny-mixtral", True, "float32", 0)
    for buffering, words in (("static-hot", "training split"), ("cpu-or-fetch", "cost model")):
        with pytest.raises((ExecutorError, SimulatorError), match=words):
            OffloadedModel(load("tiny-mixtral", True, "float32", 0), Settings(buffering=buffering, cache="8"))
    run = OffloadedModel(loaded, Settings(buffering="static-layers", cache="8"))
    assert len(run.runtime.cache.pinned) == 8 and run.runtime.pool.bytes_moved == 0


def test_summary_text_of_placements(trace):
    from pregate.simulator.cli import format_summary

    mixed = Simulation(trace, Settings(buffering="cpu-or-fetch", cache="25%")).run(bounds=False).summary
    assert mixed["decode_bytes_issued"] is None and "copies issued n/a" in format_summary(mixed)
    hot = Simulation(trace, Settings(buffering="static-hot", cache="25%")).run(bounds=False).summary
    assert "placement: static-hot: expert use counted on 2 of 4" in format_summary(hot)
