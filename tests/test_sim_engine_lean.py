"""The event-lean engine against the SimPy reference: identical outcomes on every registered policy pair.

Each case runs both engines on fresh caches and planners and compares every
field of the outcome (every step record, the timeline, the totals) and the
cache's counts, with exact equality: the lean engine replays SimPy's clock
arithmetic and its order of simultaneous events, so nothing may differ even
in the last bit.
"""

import itertools

import pytest

from pregate.simulator import engine_compiled

from pregate.simulator import Settings, Simulation
from pregate.simulator.engine import run_timed
from pregate.simulator.policies import BUFFERING, CACHING, COMPRESSION, SPECULATION
from pregate.simulator.synthetic import make_trace
from pregate.traces import open_trace


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    root = tmp_path_factory.mktemp("lean")
    # at least two batch groups at every batch size used below: the learned predictor trains on one
    shapes = [dict(seqs=6, prompt_len=3, new_tokens=12, layers=4, experts=8, top_k=2, ahead=3, seed=21),
              dict(seqs=6, prompt_len=0, new_tokens=16, layers=3, experts=12, top_k=1, ahead=2, seed=22,
                   encoder_layers=2)]
    return [open_trace(make_trace(root / str(i), **kw)) for i, kw in enumerate(shapes)]


def _run(sim, settings, **kw):
    cache, planner, buffering, comp = sim._parts(settings)
    engines = settings.copy_engines or int(sim.profile["pcie.copy_engines"])
    outcome = run_timed(sim.stream, sim.costs, planner, cache, demand_dtype=comp.demand_dtype(sim.gpu_dtype),
                        prefetch_dtype=comp.prefetch_dtype(sim.gpu_dtype), copy_engines=engines,
                        all_resident=buffering.all_resident, **kw)
    return outcome, cache.finish().as_dict(), dict(cache.state)


def _both(trace, settings):
    """(lean, reference) outcomes with timelines; and the default path (the compiled kernel
    where it applies) must equal the reference without one."""
    sim = Simulation(trace, settings)
    lean = _run(sim, settings, timeline=True, compiled=False)
    ref = _run(sim, settings, timeline=True, reference=True)
    default, ref_plain = _run(sim, settings), _run(sim, settings, reference=True)
    assert default == ref_plain, settings
    assert lean[2] == ref[2]  # the cache's contents at the end
    return lean[:2], ref[:2]


def _cases(first, second):
    """Every pair of ``first`` x ``second``; a diagonal that names every member of both at least once runs in
    the quick suite, the other pairs are marked slow (the full suite runs them all)."""
    quick = {(k % len(first), k % len(second)) for k in range(max(len(first), len(second)))}
    return [pytest.param(a, b, marks=() if (i, j) in quick else pytest.mark.slow)
            for (i, a), (j, b) in itertools.product(enumerate(first), enumerate(second))]


PAIRS = _cases(SPECULATION.names(), CACHING.names())


@pytest.mark.parametrize("spec,policy", PAIRS)
def test_lean_engine_equals_simpy_on_every_policy_pair(traces, spec, policy):
    variants = [dict(cache=9, batch_size=2, copy_engines=1), dict(cache="30%", copy_engines=2),
                dict(cache=14, copy_engines=3, per_layer=True, batch_size=3)]
    for trace, kw in itertools.product(traces, variants):
        settings = Settings(speculation=spec, cache_policy=policy, **kw)
        (lean, lean_counts), (ref, ref_counts) = _both(trace, settings)
        assert lean == ref, (spec, policy, kw)
        assert lean_counts == ref_counts


@pytest.mark.parametrize("buffering,compression", _cases(BUFFERING.names(), COMPRESSION.names()))
def test_lean_engine_equals_simpy_on_buffering_and_compression(traces, buffering, compression):
    for trace, spec in itertools.product(traces, ("none", "layer_minus_1", "oracle")):
        settings = Settings(speculation=spec, buffering=buffering, compression=compression, cache=10, batch_size=2,
                            cache_policy="belady" if spec == "oracle" else "lru")
        (lean, lean_counts), (ref, ref_counts) = _both(trace, settings)
        assert lean == ref, (buffering, compression, spec)
        assert lean_counts == ref_counts


@pytest.mark.skipif(engine_compiled.numba is None, reason="numba is not installed")
@pytest.mark.parametrize("policy", ["lru", "fifo"])
def test_compiled_kernel_runs_and_equals_simpy(traces, policy):
    """On-demand lru/fifo takes the compiled kernel; ties, bypasses and several engines included."""
    for trace, kw in itertools.product(traces, [dict(cache=1), dict(cache=3, copy_engines=3, batch_size=2),
                                                dict(cache="50%", copy_engines=2, compression="int4"),
                                                dict(cache=7, buffering="double_buffer")]):
        settings = Settings(cache_policy=policy, **kw)
        sim = Simulation(trace, settings)
        cache, planner, buffering, comp = sim._parts(settings)
        assert engine_compiled.eligible(planner, cache, False, buffering.all_resident)
        assert _run(sim, settings) == _run(sim, settings, reference=True)


@pytest.mark.skipif(engine_compiled.numba is None, reason="numba is not installed")
@pytest.mark.parametrize("policy", ["lru", "fifo"])
def test_compiled_prefetch_kernel_runs_and_equals_simpy(traces, policy):
    """layer_minus_1 into lru/fifo takes the compiled pre-gated kernel, gated and ungated, and equals
    the SimPy reference and the Python engine in every field, the cache's counts and contents and the
    gate's counters; the cases between them issue, promote, cancel and refuse prefetches."""
    from pregate.simulator import engine_compiled_prefetch

    seen = dict(prefetches=0, late=0, cancelled=0, refused=0, bypasses=0)
    variants = [dict(cache=1), dict(cache=3, copy_engines=3, batch_size=2), dict(cache=5, prefetch_gate="off"),
                dict(cache="50%", copy_engines=2, compression="int4"), dict(cache=7, buffering="double_buffer"),
                dict(cache=6, max_prefetch=1, copy_engines=2), dict(cache="70%", compression="int8", prefetch_gate="off")]
    for trace, kw in itertools.product(traces, variants):
        settings = Settings(speculation="layer_minus_1", cache_policy=policy, **kw)
        sim = Simulation(trace, settings)
        runs = []
        for how in (dict(), dict(compiled=False), dict(reference=True)):
            cache, planner, buffering, comp = sim._parts(settings)
            gated = planner.gate is not None
            if not how:
                assert engine_compiled_prefetch.eligible(planner, cache, False, buffering.all_resident) == (
                    not gated or engine_compiled_prefetch.COMPILED_GATE)
            engines = settings.copy_engines or int(sim.profile["pcie.copy_engines"])
            outcome = run_timed(sim.stream, sim.costs, planner, cache, demand_dtype=comp.demand_dtype(sim.gpu_dtype),
                                prefetch_dtype=comp.prefetch_dtype(sim.gpu_dtype), copy_engines=engines,
                                all_resident=buffering.all_resident, **how)
            gate = planner.gate
            runs.append((outcome, cache.finish().as_dict(), dict(cache.state), list(cache.policies[0].order),
                         (gate.issued, gate.refused, gate.steps, gate.steps_missed) if gate else None))
        compiled = not gated or engine_compiled_prefetch.COMPILED_GATE
        assert runs[0][0].engine.startswith("compiled" if compiled else "event-lean")
        assert runs[1][0].engine.startswith("event-lean")
        assert runs[0] == runs[1] == runs[2], kw
        outcome, counts, gate = runs[0][0], runs[0][1], runs[0][4]
        seen["prefetches"] += counts["prefetches"]
        seen["late"] += outcome.late_hits
        seen["cancelled"] += outcome.cancelled_copies
        seen["bypasses"] += counts["bypasses"]
        seen["refused"] += gate[1] if gate else 0
    if not engine_compiled_prefetch.COMPILED_GATE:  # gated runs did not go through the kernel
        seen.pop("refused")
    assert all(seen.values()), seen  # every path of the kernel was exercised


@pytest.mark.skipif(engine_compiled.numba is None, reason="numba is not installed")
def test_compiled_prefetch_kernel_follows_the_gates_duel_when_it_holds(traces, monkeypatch):
    """With the duel's allowance below zero the gate holds prefetches and probes every few layer
    steps; the kernel must hold and probe on the same steps as the Python engine and SimPy."""
    from pregate.simulator import engine_compiled_prefetch
    from pregate.simulator.gate import CostGate

    if not engine_compiled_prefetch.COMPILED_GATE:
        pytest.skip("gated runs do not take the kernel")
    monkeypatch.setattr(CostGate, "SLACK", -2.0)
    monkeypatch.setattr(CostGate, "LAG", 0.0)
    monkeypatch.setattr(CostGate, "PROBE", 4)
    held = 0
    for trace, kw in itertools.product(traces, [dict(cache=3, copy_engines=2), dict(cache="50%", batch_size=2)]):
        settings = Settings(speculation="layer_minus_1", cache_policy="lru", **kw)
        sim = Simulation(trace, settings)
        runs = []
        for how in (dict(), dict(compiled=False), dict(reference=True)):
            cache, planner, buffering, comp = sim._parts(settings)
            engines = settings.copy_engines or int(sim.profile["pcie.copy_engines"])
            outcome = run_timed(sim.stream, sim.costs, planner, cache, demand_dtype=comp.demand_dtype(sim.gpu_dtype),
                                prefetch_dtype=comp.prefetch_dtype(sim.gpu_dtype), copy_engines=engines,
                                all_resident=buffering.all_resident, **how)
            g = planner.gate
            runs.append((outcome, cache.finish().as_dict(), dict(cache.state),
                         (g.issued, g.refused, g.held, g.steps, g.steps_missed)))
        assert runs[0][0].engine.startswith("compiled")
        assert runs[0] == runs[1] == runs[2], kw
        held += runs[0][3][2]
    assert held > 0  # the duel did hold prefetches
