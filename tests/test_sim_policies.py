"""One invariant suite over every registered policy (speculation, caching, buffering, compression)."""

import pytest

from pregate.simulator import Settings, Simulation
from pregate.simulator.errors import SimulatorError
from pregate.simulator.policies import BUFFERING, CACHING, COMPRESSION, SPECULATION
from pregate.simulator.synthetic import make_trace
from pregate.traces import open_trace


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    path = make_trace(tmp_path_factory.mktemp("t") / "p", seqs=4, prompt_len=3, new_tokens=10, layers=4,
                      experts=8, top_k=2, ahead=3, encoder_layers=2, seed=11)
    return open_trace(path)


def _check_run(sim, settings):
    """Replay through the planner with the invariants checked at every layer step."""
    cache, planner, buffering, _ = sim._parts(settings)

    evict = cache.evict  # watched as it happens: what is protected is known only then

    def evicted(obj):
        assert obj not in cache.protected, f"evicted expert {obj} that the current layer uses"
        evict(obj)

    cache.evict = evicted
    cpu = 0
    for ls in range(sim.stream.n_layer_steps):
        plan = planner.plan(ls)
        cache.check()
        needed = set(sim.stream.needed(ls).tolist())
        served = {o for o, _ in plan.hits} | {o for o, _, _ in plan.misses} | {o for o, _ in plan.cpu}
        assert served == needed
        for obj in plan.prefetches:
            cache.landed(obj)
        for obj, _, cached in plan.misses:
            if cached:
                cache.landed(obj)
        for obj in plan.admits:
            assert obj in {o for o, _ in plan.cpu}, "only a CPU-run miss is copied in behind"
            cache.landed(obj)
        cpu += len(plan.cpu)
        assert cache.pinned <= cache.state.keys(), "a pinned expert left the cache"
    counts = cache.finish()
    assert counts.hits + counts.misses == sim.stream.n_requests
    assert counts.cpu == cpu and counts.admissions <= counts.cpu <= counts.misses
    assert counts.prefetch_hits + counts.wasted_prefetches <= counts.prefetches
    assert counts.peak_slots <= cache.capacity


@pytest.mark.parametrize("spec", SPECULATION.names())
@pytest.mark.parametrize("policy", CACHING.names())
def test_speculation_and_caching_invariants(trace, spec, policy):
    for per_layer in (False, True):
        settings = Settings(speculation=spec, cache_policy=policy, cache="40%", per_layer=per_layer, batch_size=2)
        _check_run(Simulation(trace, settings), settings)


@pytest.mark.parametrize("buffering", BUFFERING.names())
@pytest.mark.parametrize("spec", ["none", "layer_minus_1", "oracle"])
def test_buffering_invariants(trace, buffering, spec):
    """Every buffering scheme (the placements too) through the same invariants; a pinned cache is global."""
    for per_layer in (False,) if BUFFERING.get(buffering).static else (False, True):
        settings = Settings(speculation=spec, buffering=buffering, cache="40%", per_layer=per_layer, batch_size=2)
        _check_run(Simulation(trace, settings), settings)


@pytest.mark.parametrize("buffering", BUFFERING.names())
@pytest.mark.parametrize("compression", COMPRESSION.names())
def test_buffering_and_compression_bounds_hold(trace, buffering, compression):
    settings = Settings(buffering=buffering, compression=compression, cache="25%", speculation="layer_minus_1")
    result = Simulation(trace, settings).run()
    s = result.summary
    assert s["hits"] + s["late_hits"] + s["misses"] == s["requests"]
    assert s["mean_step_latency_s"] >= s["bound_resident_mean_step_latency_s"] * (1 - 1e-12)
    assert s["stall_s"] >= 0 and 0 <= s["stall_share"] <= 1
    if buffering == "resident":
        assert s["misses"] == 0 and s["bytes_moved"] == 0


@pytest.mark.parametrize("policy", CACHING.names())
def test_oracle_bound_not_slower_than_on_demand(trace, policy):
    s = Simulation(trace, Settings(cache_policy=policy, cache="30%")).run().summary
    assert s["bound_oracle_mean_step_latency_s"] <= s["mean_step_latency_s"] * (1 + 1e-9)


def test_unknown_policy_suggests_closest(trace):
    with pytest.raises(SimulatorError, match=r"unknown speculation policy 'layer_minus1'.*did you mean 'layer_minus_1'"):
        Simulation(trace, Settings(speculation="layer_minus1"))


def test_policy_needing_ahead_refuses_trace_without_it(tmp_path):
    path = make_trace(tmp_path / "na", seqs=1, new_tokens=3, ahead=0)
    with pytest.raises(SimulatorError, match="needs the trace's 'ahead' column"):
        Simulation(path, Settings(speculation="layer_minus_1")).replay()


@pytest.mark.parametrize("policy", ["lfu", "least-stale"])
def test_heap_victim_is_the_scans(policy):
    """The heap-kept victim equals the least ``key`` over every evictable object, whatever
    the order of inserts, hits, removals, layer steps and protected sets."""
    import random

    from pregate.simulator.stream import Layout
    from pregate.traces import StackMeta
    from types import SimpleNamespace

    layout = Layout.from_meta(SimpleNamespace(stacks={"decoder": StackMeta(4, 6, 1)}))
    rng = random.Random(3)
    p = CACHING.get(policy)(layout=layout)
    cached: set[int] = set()
    for step in range(3000):
        p.on_layer(step % layout.n_layers, step)
        obj = rng.randrange(layout.n_objects)
        if obj in cached:
            if rng.random() < 0.2:
                p.on_remove(obj)
                cached.discard(obj)
            else:
                p.on_hit(obj, step, 0)
        else:
            p.on_insert(obj, step, 0)
            cached.add(obj)
        protected = set(rng.sample(sorted(cached), k=min(len(cached), rng.randrange(4))))
        expected = min((o for o in cached if o not in protected), key=p.key, default=None)
        assert p.victim(protected) == expected


def test_pinned_hot_does_not_count_a_prefetch_as_a_use():
    """A prefetched expert has not been used: counted, a wrong prefetch would pin itself."""
    from pregate.simulator.policies.caching import PinnedHot

    policy = PinnedHot()
    policy.set_capacity(2)
    policy.on_insert(1, 0, 0)  # used once
    policy.on_prefetch(2, 1, 0)  # copied in ahead, not used yet
    assert policy.victim(set()) == 2
    policy.on_hit(2, 2, 0)  # now used once, and more recently than 1
    assert policy.victim(set()) == 1
