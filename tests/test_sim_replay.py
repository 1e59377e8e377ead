"""Fast replay: exact miss counts against libCacheSim, and agreement between the drivers."""

import numpy as np
import pytest

from pregate.simulator import Settings, Simulation
from pregate.simulator.stream import NEVER, build_stream
from pregate.simulator.synthetic import make_trace
from pregate.traces import open_trace


@pytest.fixture(scope="module")
def decode_only(tmp_path_factory):
    # top-1, no prompt rows: one request per (sequence, token, MoE layer)
    path = make_trace(tmp_path_factory.mktemp("t") / "dec", seqs=6, prompt_len=0, new_tokens=40, layers=4,
                      experts=8, top_k=1, ahead=0, seed=3, stickiness=0.4)
    return open_trace(path)


@pytest.fixture(scope="module")
def topk_batch(tmp_path_factory):
    path = make_trace(tmp_path_factory.mktemp("t") / "tk", seqs=4, prompt_len=3, new_tokens=12, layers=4,
                      experts=8, top_k=2, ahead=3, encoder_layers=2, seed=5)
    return open_trace(path)


def test_stream_order_is_sequences_tokens_layers(decode_only):
    stream = build_stream(decode_only, batch_size=1)
    frame = decode_only.collect()
    expected = (frame["layer"].cast(int) * 8 + frame["experts"].list.first().cast(int)).to_numpy()
    assert np.array_equal(stream.req_obj, expected)


def _libcachesim_misses(lcs, name, objs, capacity):
    cache = getattr(lcs, name)(capacity)
    nxt = np.full(len(objs), -1)
    last = {}
    for i in range(len(objs) - 1, -1, -1):
        nxt[i] = last.get(objs[i], -1)
        last[objs[i]] = i
    misses = 0
    for i, obj in enumerate(objs):
        future = int(nxt[i]) if nxt[i] >= 0 else np.iinfo(np.int64).max
        req = lcs.Request(obj_size=1, obj_id=int(obj), clock_time=i, next_access_vtime=future)
        if not cache.get(req):
            misses += 1
    return misses


@pytest.mark.parametrize("policy,lcs_name", [("lru", "LRU"), ("lfu", "LFU"), ("fifo", "FIFO"), ("belady", "Belady")])
def test_miss_counts_equal_libcachesim(decode_only, policy, lcs_name):
    lcs = pytest.importorskip("libcachesim", reason="libcachesim (PyPI) is not installed")
    objs = build_stream(decode_only).req_obj.tolist()
    for capacity in (2, 5, 9, 16, 24):
        sim = Simulation(decode_only, Settings(cache=capacity, cache_policy=policy))
        expected = _libcachesim_misses(lcs, lcs_name, objs, capacity)
        assert sim.replay(fast=True).misses == expected, (policy, capacity)
        assert sim.replay(fast=False).misses == expected, (policy, capacity)


@pytest.mark.parametrize("policy", ["lru", "lfu", "fifo", "belady"])
@pytest.mark.parametrize("batch", [1, 3])
def test_fast_loops_equal_general_path(topk_batch, policy, batch):
    for capacity in (1, 3, 6, 12, 30):
        sim = Simulation(topk_batch, Settings(cache=capacity, cache_policy=policy, batch_size=batch))
        fast, general = sim.replay(fast=True), sim.replay(fast=False)
        for key in ("hits", "misses", "bypasses", "evictions", "peak_slots", "bytes_moved"):
            assert getattr(fast, key) == getattr(general, key), (key, capacity)


@pytest.mark.parametrize("spec", ["none", "layer_minus_1", "oracle", "transition"])
@pytest.mark.parametrize("policy", ["lru", "belady", "least-stale"])
def test_replay_and_timed_run_give_identical_counts(topk_batch, spec, policy):
    settings = Settings(cache="30%", cache_policy=policy, speculation=spec, batch_size=2)
    sim = Simulation(topk_batch, settings)
    counts = sim.replay()
    summary = sim.run(bounds=False).summary
    assert summary["hits"] + summary["late_hits"] == counts.hits
    for key in ("misses", "prefetches", "wasted_prefetches", "evictions", "bypasses", "prefetch_hits"):
        assert summary[key] == getattr(counts, key), key


def test_next_use_lookup(decode_only):
    stream = build_stream(decode_only)
    for i in range(0, stream.n_requests, 17):
        obj = int(stream.req_obj[i])
        assert stream.next_use(obj, i) == i
        assert stream.next_use(obj, i + 1) == (stream.req_next[i] if stream.req_next[i] != NEVER else NEVER)
