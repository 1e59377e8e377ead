"""The cache mechanism's additions and the hybrid and predicted-next-use eviction policies."""

from types import SimpleNamespace

import numpy as np
import pytest

from pregate.simulator import Settings, Simulation
from pregate.simulator.cache import ExpertCache
from pregate.simulator.policies import CACHING
from pregate.simulator.stream import Layout, build_stream
from pregate.simulator.synthetic import make_trace
from pregate.traces import StackMeta, open_trace


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """Top-1 decode only over 8 layers x 16 experts: 128 objects, one request per layer step."""
    path = make_trace(tmp_path_factory.mktemp("c") / "w", seqs=6, prompt_len=0, new_tokens=40, layers=8,
                      experts=16, top_k=1, ahead=0, seed=7, stickiness=0.5, skew=1.2)
    return open_trace(path)


def _lcs_misses(lcs, name, objs, capacity):
    cache = getattr(lcs, name)(capacity)
    misses = 0
    for i, obj in enumerate(objs):
        req = lcs.Request(obj_size=1, obj_id=int(obj), clock_time=i, next_access_vtime=-1)
        if not cache.get(req):
            misses += 1
    return misses


def test_s3fifo_miss_counts_equal_libcachesim(wide):
    lcs = pytest.importorskip("libcachesim", reason="libcachesim (PyPI) is not installed")
    objs = build_stream(wide).req_obj.tolist()
    # libCacheSim's small queue caches nothing below 20 slots (one object may not fill it)
    for capacity in (20, 30, 45, 64, 100):
        sim = Simulation(wide, Settings(cache=capacity, cache_policy="s3fifo"))
        expected = _lcs_misses(lcs, "S3FIFO", objs, capacity)
        assert sim.replay(fast=False).misses == expected, capacity


def _layout(layers=4, experts=4):
    return Layout.from_meta(SimpleNamespace(stacks={"decoder": StackMeta(layers, experts, 1)}))


def test_next_use_learns_which_experts_come_back():
    """Expert 0 of every layer is used at every token, expert 1 at every fourth, the others
    never twice running: after a while the policy evicts the rarely reused ones first."""
    layout = _layout()
    p = CACHING.get("next-use")(layout=layout)
    cached = set()
    step = 0
    for token in range(40):
        for layer in range(4):
            p.on_layer(layer, step)
            base = layer * 4
            used = [base] + ([base + 1] if token % 4 == 0 else []) + [base + 2 + token % 2]
            for obj in used:
                if obj in cached:
                    p.on_hit(obj, step, 0)
                else:
                    p.on_insert(obj, step, 0)
                    cached.add(obj)
            step += 1
    assert p.p_next(0) > 0.9
    assert p.p_next(0) > p.p_next(1) > 0.0
    victim = p.victim(protected=set())
    assert victim is not None and victim % 4 != 0, "an always-used expert was chosen as the victim"
    # protection is respected
    others = {o for o in cached if o != 0}
    assert p.victim(protected=others) == 0


def test_next_use_beats_lru_on_sticky_routing(wide):
    """On routing with sticky, skewed choices the predicted next use misses less than LRU."""
    sim = Simulation(wide, Settings())
    for capacity in (16, 32, 64):
        lru = sim.replay(Settings(cache=capacity, cache_policy="lru"), fast=False).misses
        assert sim.replay(Settings(cache=capacity, cache_policy="next-use"), fast=False).misses < lru


def test_every_policy_is_told_its_partition_capacity():
    layout = _layout(layers=4, experts=8)
    told = []

    class Spy(CACHING.get("lru")):
        def set_capacity(self, capacity):
            told.append(capacity)

    ExpertCache(layout, 10, lambda: Spy(layout=layout), per_layer=True)
    assert told == [3, 3, 2, 2]


def test_clear_evicts_everything_and_counts_it():
    layout = _layout()
    cache = ExpertCache(layout, 6, lambda: CACHING.get("lru")(layout=layout))
    cache.begin_layer(0, 0, [0, 1])
    cache.miss(0, 0, 10)
    cache.miss(1, 1, 10)
    cache.prefetch(5, 2, 10)
    cache.clear()
    assert cache.state == {} and cache.sizes == [0]
    assert cache.counts.evictions == 3 and cache.counts.wasted_prefetches == 1
    cache.check()
    assert np.all(np.array(cache.sizes) == 0)


@pytest.mark.parametrize("name", ["lru", "fifo"])
def test_adopt_leaves_the_cache_as_driving_it_would(name):
    """A compiled run hands back its final order and counts through ``adopt``; the cache must
    then behave exactly like one that was driven through the same requests."""
    layout = _layout()
    factory = lambda: CACHING.get(name)(layout=layout)  # noqa: E731
    driven = ExpertCache(layout, 4, factory)
    for t, obj in enumerate([0, 1, 2, 3, 1, 4, 0, 5]):
        driven.begin_layer(0, t, [obj])
        if obj in driven.state:
            driven.hit(obj, t, 0)
        else:
            driven.miss(obj, t, 0)
    order = list(driven.policies[0].order)  # the policy's victim order, next victim first
    adopted = ExpertCache(layout, 4, factory)
    adopted.adopt(order, driven.counts.as_dict(), in_flight=[order[-1]])
    assert adopted.counts == driven.counts and adopted.sizes == driven.sizes
    assert set(adopted.state) == set(driven.state)
    assert adopted.state[order[-1]] == 2 and adopted.state[order[0]] == 1  # in flight / resident
    adopted.check()
    victims = []
    for cache in (driven, adopted):  # the next evictions come in the same order
        cache.begin_layer(0, 99, [])
        victims.append([])
        for _ in range(3):
            victims[-1].append(cache.policies[0].victim(cache.protected))
            cache.evict(victims[-1][-1])
    assert victims[0] == victims[1] and len(set(victims[0])) == 3
    with pytest.raises(ValueError, match="unknown cache count"):
        adopted.adopt(order, {"hitz": 1})
