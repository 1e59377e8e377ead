"""bench/reference_loop.py's measurement: how it times its tables and fits its host costs."""

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ref():
    spec = importlib.util.spec_from_file_location("reference_loop", ROOT / "bench" / "reference_loop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _runs(truth: dict) -> dict:
    """Fit runs with phases made of known per-unit costs: batch 1 has one expert per layer step,
    batch 4 three; the cache sizes give different copies."""
    runs = {}
    for batch, per_ls in ((1, 1), (2, 1.8), (4, 3)):
        for cap, pre, share in ((32, False, 0.0), (8, False, 0.6), (8, True, 0.8), (16, False, 0.3), (16, True, 0.5)):
            ls = 1000 // batch
            experts = int(ls * per_ls)
            copies = int(experts * share)
            resident = cap == 32
            table_expert, table_dense, copy_s = 5e-5 * experts, 3e-5 * ls, 2e-5
            runs[(batch, cap, pre)] = dict(
                layer_steps=ls, experts=experts, copies=copies, blocks=2 * ls,
                dense_s=table_dense + truth["per_block"] * 2 * ls, route_s=truth["router_sync"] * ls,
                # the layer step's own work shows up in both phases: planning, and the output buffer and sum
                plan_s=(truth["resident_layer_step" if resident else "layer_step"] - 4e-6) * ls
                + copies * (copy_s + truth["copy_issue"]) + 0.25 * truth["per_expert"] * experts,
                expert_s=table_expert + 4e-6 * ls + 0.75 * truth["per_expert"] * experts,
                table_expert_s=table_expert, table_dense_s=table_dense, copy_s=copy_s, resident=resident)
    return runs


def test_fit_tells_the_layer_steps_work_from_the_experts(ref):
    """The joint fit recovers each unit's cost, although the expert phase holds per layer step work too."""
    truth = dict(per_block=2e-6, router_sync=2e-5, layer_step=1.2e-5, resident_layer_step=6e-6, per_expert=9e-6,
                 copy_issue=3e-6)
    fit = ref.fit_host(_runs(truth))
    for key, value in truth.items():
        assert fit[key] == pytest.approx(value, rel=1e-6), key
    assert fit["per_resident_expert"] == pytest.approx(truth["per_expert"])
    # the expert phase's excess per expert is not one figure (what a median of it assumed): the layer
    # step's own work is spread over fewer experts at batch 1 than at batch 4
    runs = _runs(truth)
    ratio = {k: (r["expert_s"] - r["table_expert_s"]) / r["experts"] for k, r in runs.items()}
    assert ratio[(1, 8, False)] > 1.25 * ratio[(4, 8, False)]


def test_dense_table_has_no_attention_the_loop_does_not_run(ref):
    """Two contexts with the same times: the simulator adds no roofline attention over the longer contexts."""
    from pregate.simulator.costs import build_costs
    from pregate.simulator.profile import load_profile
    from pregate.simulator.runtime import load_runtime
    from pregate.simulator.stream import build_stream
    from pregate.traces import open_trace

    trace = open_trace(ROOT / "traces" / "samples" / "pregate-moe-tiny")
    stream = build_stream(trace, batch_size=4)
    counts = [1, 2, 4, 8]
    rounds = [{"expert": [4e-5, 5e-5, 6e-5, 7e-5], "dense": [2e-5, 2.5e-5, 3e-5, 4e-5]},
              {"expert": [3e-5, 6e-5, 5e-5, 8e-5], "dense": [3e-5, 2.2e-5, 3.5e-5, 3.9e-5]}]
    exp_t, short, long = ref.tables(rounds, trace.meta, counts, "a test")
    assert exp_t.seconds == pytest.approx([3e-5, 5e-5, 5e-5, 7e-5])  # least per count, then non-decreasing
    assert short.seconds == pytest.approx([2e-5, 2.2e-5, 3e-5, 3.9e-5]) and long.seconds == short.seconds
    assert (short.context, long.context) == (64, ref.LONG_CONTEXT)
    hw, rt = load_profile("rtx3090"), load_runtime("pregate-eager")
    both = build_costs(stream, dataclasses.replace(hw, expert_tables=(exp_t,), dense_tables=(short, long)), rt)
    one = build_costs(stream, dataclasses.replace(hw, expert_tables=(exp_t,), dense_tables=(short,)), rt)
    decode = stream.ls_tokens <= 4
    blocks = ref.blocks_of(trace.meta, stream.layout)
    expected = blocks * np.interp(stream.ls_tokens[decode], counts, short.seconds)
    assert np.asarray(both.dense_gpu)[decode] == pytest.approx(expected, rel=1e-3)
    assert np.all(np.asarray(one.dense_gpu)[decode] >= expected * (1 - 1e-9))
    assert np.any(np.asarray(one.dense_gpu)[decode] > expected * 1.01)  # one context: attention added


def test_tables_time_the_functions_the_way_the_loop_calls_them(ref):
    """An expert on a different expert's weights each call; a block on each layer in turn, after experts."""
    from pregate.simulator.stream import build_stream
    from pregate.simulator.synthetic import make_trace
    from pregate.traces import open_trace

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        trace = open_trace(make_trace(Path(tmp) / "t", seqs=2, prompt_len=2, new_tokens=2, layers=3))
        meta = dataclasses.replace(trace.meta, d_model=16, d_ff=32, expert_params=2 * 16 * 32,
                                   dense_bytes_per_layer=2 * 16 * 32 * 4, dtype="float32")
        loop = ref.Loop(meta, build_stream(trace, batch_size=1).layout, 2, 1)
        seen, order = [], []
        expert, dense = loop.expert, loop.run_dense
        loop.expert = lambda flat, *a: (seen.append(flat.data_ptr()), order.append("e"), expert(flat, *a))[-1]
        layers = []
        loop.run_dense = lambda layer, x: (layers.append(layer), order.append("d"), dense(layer, x))[-1]
        timed = ref.time_tables(loop, [1, 2], top_k=1)
    assert set(timed) == {"expert", "dense"} and all(len(v) == 2 for v in timed.values())
    rows = {loop.store[i].data_ptr() for i in range(loop.store.shape[0])}
    assert set(seen) == rows  # every expert of the store, in turn
    assert all(a != b for a, b in zip(seen, seen[1:]))  # never the same weights twice in a row
    assert set(layers) == set(range(len(loop.dense)))
    assert "dd" not in "".join(order[order.index("d"):])  # each block after experts


def test_distinct_experts_of_a_layer_step(ref):
    assert [ref.distinct_experts(n, 1, 8) for n in (1, 2, 4, 64)] == [1, 2, 3, 8]
    assert ref.distinct_experts(1, 2, 8) == 2 and ref.distinct_experts(3, 8, 8) == 8


def test_nonnegative_fit_never_goes_below_zero(ref):
    """A noisy column that would take a negative cost is left out and the rest refitted."""
    A = np.array([[1.0, 1.0], [1.0, 2.0], [1.0, 3.0]])
    y = np.array([3.0, 2.0, 1.0])  # unconstrained: 4 - 1 x
    x = ref.nonnegative_lstsq(A, y)
    assert x[1] == 0 and x[0] == pytest.approx(2.0)
    assert ref.nonnegative_lstsq(A, A @ np.array([0.5, 2.0])) == pytest.approx([0.5, 2.0])
