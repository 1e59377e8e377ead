"""The request stream built in chunks of pass groups equals the stream built in one piece."""

import numpy as np
import pytest

from pregate.simulator.stream import NEVER, Window, build_stream, next_uses
from pregate.simulator.synthetic import make_trace
from pregate.traces import open_trace

FIELDS = ("pass_group", "pass_step", "pass_decode", "pass_seqs", "pass_ls_start", "ls_pass", "ls_layer", "ls_tokens",
          "ls_ctx", "ls_req_start", "req_obj", "req_tokens", "req_next")


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    path = make_trace(tmp_path_factory.mktemp("s") / "t", seqs=7, prompt_len=3, new_tokens=6, layers=3, experts=8,
                      top_k=2, ahead=2, encoder_layers=2, seed=5)
    return open_trace(path)


@pytest.mark.parametrize("batch_size", [1, 2, 3])
@pytest.mark.parametrize("chunk_rows", [1, 17, 100])
def test_chunked_build_equals_one_piece(trace, batch_size, chunk_rows):
    whole = build_stream(trace, batch_size=batch_size, chunk_rows=1 << 30)
    parts = build_stream(trace, batch_size=batch_size, chunk_rows=chunk_rows)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(parts, name), getattr(whole, name), err_msg=name)
    assert sorted(parts.ahead) == sorted(whole.ahead) and whole.ahead
    for j in whole.ahead:
        for a, b in zip(parts.ahead[j], whole.ahead[j]):
            np.testing.assert_array_equal(a, b)
    # a frame gives the same stream as the trace it came from
    frame = build_stream(trace.collect(), trace.meta, batch_size=batch_size, chunk_rows=chunk_rows)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(frame, name), getattr(whole, name), err_msg=name)


def test_next_uses_in_chunks_equals_a_global_sort():
    rng = np.random.default_rng(0)
    objs = rng.integers(0, 40, size=5000).astype(np.int32)
    order = np.lexsort((np.arange(len(objs)), objs))
    same = objs[order][1:] == objs[order][:-1]
    expected = np.full(len(objs), NEVER, np.int64)
    expected[order[:-1][same]] = order[1:][same]
    for chunk in (1, 7, 999, 1 << 20):
        np.testing.assert_array_equal(next_uses(objs, chunk=chunk), expected)


def test_window_reads_like_the_list():
    values = np.arange(1000, dtype=np.int64) * 3
    plain = values.tolist()
    w = Window(values, size=64)
    rng = np.random.default_rng(1)
    assert len(w) == len(plain)
    for i in list(range(1000)) + rng.integers(0, 1000, size=300).tolist():
        assert w[i] == plain[i]
        a = int(rng.integers(0, 1000))
        b = min(1000, a + int(rng.integers(0, 80)))
        assert w[a:b] == plain[a:b]
    assert w[-1] == plain[-1]


def test_unordered_trace_falls_back_to_filtered_reads(trace, tmp_path):
    """A trace whose rows are not in sequence order cannot be read batch by batch; it is filtered
    per chunk instead and gives the same stream; ids are int16 for a model this small."""
    import pyarrow.parquet as pq

    from pregate.simulator import stream as stream_mod
    from pregate.traces import TraceWriter

    table = pq.read_table(trace.files[0])
    shuffled = table.take(np.random.default_rng(3).permutation(table.num_rows))
    writer = TraceWriter(tmp_path / "shuffled", trace.meta, overwrite=True)
    writer.write(0, shuffled)
    reordered = open_trace(tmp_path / "shuffled")
    assert stream_mod._seq_ordered_files(reordered) is None
    assert stream_mod._seq_ordered_files(trace) is not None
    whole = build_stream(trace, batch_size=2, chunk_rows=1 << 30)
    other = build_stream(reordered, batch_size=2, chunk_rows=17)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(other, name), getattr(whole, name), err_msg=name)
    assert whole.req_obj.dtype == np.int16 and whole.ls_layer.dtype == np.int16
    assert all(objs.dtype == np.int16 for _, objs, _ in whole.ahead.values())
