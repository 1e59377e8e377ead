"""The planner's rules: protection of what speculation names, and the cost gate on prefetches."""

import pytest

from pregate.simulator import Settings, Simulation
from pregate.simulator.gate import PrefetchTiming
from pregate.simulator.policies import SPECULATION
from pregate.simulator.policies.speculation import SpeculationPolicy
from pregate.simulator.synthetic import make_trace
from pregate.traces import open_trace


@pytest.fixture(scope="module")
def top2(tmp_path_factory):
    """Decoder-only, top-2 of 8, six MoE layers, with a pre-gating signal."""
    path = make_trace(tmp_path_factory.mktemp("pl") / "t", seqs=4, prompt_len=2, new_tokens=12, layers=6,
                      experts=8, top_k=2, ahead=3, seed=5)
    return open_trace(path)


class Scripted(SpeculationPolicy):
    """Names, at one layer step, exactly the experts a test chose."""

    def __init__(self, at: int, names):
        super().__init__()
        self.at, self.names = at, names

    def predict(self, view):
        return list(self.names(view)) if view.ls == self.at else []


def _walk(sim, settings, upto, spec=None, timing=None):
    cache, planner, _, _ = sim._parts(settings)
    if spec is not None:
        planner.spec, planner.wants_prefetch = spec, True
    planner.use_timing(timing)
    for ls in range(upto):
        plan = planner.plan(ls)
        for obj in plan.prefetches:
            cache.landed(obj)
        for obj, _, cached in plan.misses:
            if cached:
                cache.landed(obj)
    return cache, planner


def _later_layer_objects(sim, ls, exclude, n):
    """``n`` experts of the layers after ``ls``'s in the same pass, none in ``exclude``."""
    stream, layout = sim.stream, sim.stream.layout
    layer = int(stream.ls_layer[ls])
    out = []
    for target in range(layer + 1, layout.n_layers):
        base = int(layout.base[target])
        out += [base + e for e in range(int(layout.experts[target])) if base + e not in exclude]
    return out[:n]


@pytest.mark.parametrize("gated", [False, True])
def test_a_resident_expert_that_speculation_names_is_not_evicted_by_a_later_prefetch(top2, gated):
    settings = Settings(cache=6, cache_policy="lru", prefetch_gate="off")
    sim = Simulation(top2, settings)
    first = int(sim.stream.pass_ls_start[3])  # first layer step of a decode pass: the cache is full by now
    needed = set(sim.stream.needed(first).tolist())
    chosen, held = {}, {}

    def names(view):
        # after this step's hits and misses: the LRU victim is the oldest expert this step does not use
        cache = held["cache"]
        chosen["old"] = next(o for o in cache.policies[0].order if o not in needed)
        fresh = _later_layer_objects(sim, first, set(cache.state) | needed, 6)
        return [chosen["old"]] + fresh

    # prefetches free, a demand copy stalls ten layer steps, enough copy engines that the link never queues
    cheap = PrefetchTiming(1e-9, 1e-2, 100, [1e-3] * sim.stream.n_layer_steps) if gated else None
    cache, planner, _, _ = sim._parts(settings)
    held["cache"] = cache
    planner.spec, planner.wants_prefetch = Scripted(first, names), True
    planner.use_timing(cheap)  # from the start, so the gate's shadow cache has seen the same requests
    for ls in range(first):
        plan = planner.plan(ls)
        for obj, _, cached in plan.misses:
            if cached:
                cache.landed(obj)
    plan = planner.plan(first)
    evicted = plan.evicted
    assert plan.prefetches, "the scripted prefetches must have been issued for the test to mean anything"
    old = chosen["old"]
    assert old in cache.state, "the named resident expert was evicted by a prefetch of the same round"
    assert old not in evicted
    assert len(evicted) >= len(plan.prefetches) - 1  # the cache was full: the prefetches had to evict
    assert not set(evicted) & needed


@pytest.mark.parametrize("spec", SPECULATION.names())
@pytest.mark.parametrize("gate", ["off", "cost"])
def test_no_prefetch_evicts_the_current_step_or_an_earlier_prediction(top2, spec, gate):
    """Every registered speculation policy on a top-2 trace: a prefetch never evicts an expert the
    current layer step uses, nor one that an earlier name of the same round protected."""
    settings = Settings(speculation=spec, cache_policy="lru", cache="30%", prefetch_gate=gate, batch_size=2)
    sim = Simulation(top2, settings)
    cache, planner, _, _ = sim._parts(settings)
    names: list[int] = []
    predict = planner.spec.predict

    def spy(view):
        names[:] = predict(view)
        return names

    planner.spec.predict = spy
    phase = {"named": False}
    round_evictions: list[tuple[int, bool, int]] = []  # (victim, after the prediction, prefetches so far)
    evict = cache.evict  # watched as it happens: which prefetch made room is known only then

    def watched(obj):
        round_evictions.append((obj, phase["named"], cache.counts.prefetches))
        evict(obj)

    cache.evict = watched
    issued = 0
    for ls in range(sim.stream.n_layer_steps):
        names.clear()
        round_evictions.clear()
        phase["named"] = False
        base = cache.counts.prefetches
        planner.spec.predict = lambda view: (phase.update(named=True), spy(view))[1]
        plan = planner.plan(ls)
        needed = set(sim.stream.needed(ls).tolist())
        assert plan.evicted == [v for v, _, _ in round_evictions], "the plan lists every eviction, in order"
        assert not {v for v, _, _ in round_evictions} & needed
        for victim, after, so_far in round_evictions:
            if not after:
                continue
            cause = plan.prefetches[so_far - base]  # the prefetch that made room
            earlier = names[: names.index(cause)]
            assert victim not in earlier, f"{spec}: prefetch of {cause} evicted {victim}, named before it"
        issued += len(plan.prefetches)
        for obj in plan.prefetches:
            cache.landed(obj)
        for obj, _, cached in plan.misses:
            if cached:
                cache.landed(obj)
        cache.check()
    counts = cache.finish()
    assert counts.hits + counts.misses == sim.stream.n_requests
    assert counts.prefetch_hits + counts.wasted_prefetches == counts.prefetches == issued


def test_the_gate_refuses_prefetches_a_slow_link_cannot_pay_for(top2):
    settings = Settings(speculation="layer_minus_1", cache="30%")
    sim = Simulation(top2, settings)
    n = sim.stream.n_layer_steps
    cheap = PrefetchTiming(1e-6, 1e-2, 1, [1e-3] * n)  # prefetches free, a demand copy stalls ten layer steps
    dear = PrefetchTiming(1.0, 1.0, 1, [1e-3] * n)  # a copy costs a thousand layer steps
    _, free = _walk(sim, settings, n, timing=cheap)
    _, slow = _walk(sim, settings, n, timing=dear)
    _, ungated = _walk(sim, settings, n, timing=None)
    assert free.gate.issued > 0
    assert slow.gate.issued < free.gate.issued
    assert slow.gate.refused > 0
    assert ungated.gate is None


def test_the_gate_issues_nothing_when_demand_copies_hide_behind_the_step(tmp_path):
    """Top-2 steps of 1 ms and 0.1 ms copies: a demand copy lands while the other expert computes,
    so a prefetch would save no stall and costs link and issue time."""
    path = make_trace(tmp_path / "hide", seqs=2, prompt_len=2, new_tokens=8, layers=6, experts=8, top_k=2,
                      ahead=3, seed=5)
    settings = Settings(speculation="oracle", cache="30%")
    sim = Simulation(open_trace(path), settings)
    n = sim.stream.n_layer_steps
    _, hidden = _walk(sim, settings, n, timing=PrefetchTiming(1e-4, 1e-4, 1, [1e-3] * n))
    _, stalled = _walk(sim, settings, n, timing=PrefetchTiming(1e-4, 1e-2, 100, [1e-3] * n))
    assert hidden.gate.issued == 0 and hidden.gate.refused > 0
    assert stalled.gate.issued > 0


def test_gate_confidence_learns_the_policys_precision(top2):
    """Oracle predictions are always right: the gate's confidence in them tends to 1."""
    settings = Settings(speculation="oracle", cache="30%")
    sim = Simulation(top2, settings)
    n = sim.stream.n_layer_steps
    _, planner = _walk(sim, settings, n, timing=PrefetchTiming(1e-6, 1e-2, 1, [1e-3] * n))
    assert planner.gate.confidence(1, 0) > 0.95
    assert planner.gate.horizon() == 3


@pytest.mark.parametrize("spec", ["layer_minus_1", "transition", "oracle"])
def test_gated_decisions_identical_in_replay_and_timed_run(top2, spec):
    settings = Settings(speculation=spec, cache="25%", prefetch_gate="cost", batch_size=2)
    sim = Simulation(top2, settings)
    counts = sim.replay(settings, fast=False)
    outcome, cache = sim.timed(settings)
    c = cache.counts
    assert (counts.prefetches, counts.misses, counts.evictions) == (c.prefetches, c.misses, c.evictions)
    assert counts.hits == c.hits


def test_reset_cache_per_sequence_starts_every_batch_cold(top2):
    keep = Simulation(top2, Settings(cache="50%"))
    reset = Settings(cache="50%", reset_cache_per_sequence=True)
    cold = Simulation(top2, reset)
    warm_counts, cold_counts = keep.replay(), cold.replay()
    assert cold_counts.misses > warm_counts.misses
    # the first layer step of every batch misses on every expert it needs
    cache, planner, _, _ = cold._parts(reset)
    s = cold.stream
    firsts = {int(s.pass_ls_start[p]) for p in range(s.n_passes) if p == 0 or s.pass_group[p] != s.pass_group[p - 1]}
    for ls in range(s.n_layer_steps):
        plan = planner.plan(ls)
        if ls in firsts:
            assert not plan.hits
        for obj, _, cached in plan.misses:
            if cached:
                cache.landed(obj)
    # both drivers agree with the reset too
    timed_outcome, timed_cache = cold.timed(reset)
    assert timed_cache.counts.misses == cold_counts.misses


def _counts(misses, cpu=0, prefetches=0, prefetch_hits=0):
    from pregate.simulator.cache import CacheCounts

    return CacheCounts(misses=misses, cpu=cpu, prefetches=prefetches, prefetch_hits=prefetch_hits)


def test_gate_holds_prefetches_while_the_run_is_behind_the_shadow_clock():
    """Demand misses the shadow does not have put the model clock behind it: prefetches stop,
    except on every PROBE-th layer step; once the shadow's own misses even the clocks, they resume."""
    from pregate.simulator.gate import CostGate

    gate = CostGate(PrefetchTiming(1e-6, 0.01, 1, [1e-3] * 64))
    # layer step 0: the prefetching run has 10 demand misses, the shadow none
    gate.observe(_counts(10, prefetches=5), _counts(0))
    gate.begin(0, [])
    gate.after_demand(0, 10)
    gate.end(0)
    assert gate.duel_real.now > gate.duel_shadow.now + gate.SLACK * 0.01
    assert gate.steps % gate.PROBE != 0 and gate.behind()
    assert not gate.worth(1, 1, 0, has_victim=False)
    assert gate.held == 1
    # layer step 1: the shadow pays 10 misses of its own (the run none): the clocks are even again
    gate.observe(_counts(10, prefetches=5), _counts(10))
    gate.begin(1, [])
    gate.after_demand(1, 0)
    gate.end(1)
    assert not gate.behind()


def test_gate_probes_while_behind():
    from pregate.simulator.gate import CostGate

    gate = CostGate(PrefetchTiming(1e-6, 0.01, 1, [1e-3] * 64))
    gate.observe(_counts(10), _counts(0))
    gate.after_demand(0, 10)
    gate.end(0)
    probes = 0
    for ls in range(1, 1 + 2 * gate.PROBE):
        gate.observe(_counts(10), _counts(0))
        gate.after_demand(ls, 0)
        probes += not gate.behind()
        gate.end(ls)
    assert probes == 2  # every PROBE-th layer step, never more
