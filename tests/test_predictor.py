"""The learned predictor: training split, file format, the `learned` policy in simulator and executor."""

import numpy as np
import pytest

from pregate.cli import main
from pregate.simulator import Settings, Simulation
from pregate.simulator.errors import SimulatorError
from pregate.simulator.policies.learned import Learned
from pregate.simulator.predictor import Predictor, evaluate, online_rows, split_sequences, train
from pregate.simulator.stream import Layout
from pregate.simulator.synthetic import like_trace, make_trace
from pregate.traces import open_trace


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    return open_trace(like_trace(tmp_path_factory.mktemp("p") / "m", "mixtral-8x7b", seqs=4, decode_tokens=48))


@pytest.fixture(scope="module")
def model(trace):
    return train(trace, steps=60)


def test_split_is_by_whole_groups_and_seeded():
    seqs = np.arange(10)
    a = split_sequences(seqs, batch_size=2, seed=3)
    assert len(a) == 6 or len(a) == 4
    assert all((s ^ 1) in a for s in a)  # groups {0,1}, {2,3}, ... stay together
    assert np.array_equal(a, split_sequences(seqs, batch_size=2, seed=3))
    assert len(split_sequences([7], seed=0)) == 0


def test_online_rows_count_only_earlier_tokens():
    rng = np.random.default_rng(0)
    t_n, e = 700, 5
    src = np.eye(e, dtype=np.float32)[rng.integers(0, e, t_n)]
    dst = np.eye(e, dtype=np.float32)[rng.integers(0, e, t_n)]
    seq = np.repeat(np.arange(7), 100)
    glob, local = online_rows(src, dst, seq, chunk=64)
    for i in (0, 1, 99, 100, 350, 699):
        g = src[i] @ (src[:i].T @ dst[:i])
        same = seq[:i] == seq[i]
        s = src[i] @ (src[:i][same].T @ dst[:i][same])
        assert np.allclose(glob[i], g / max(1, g.sum())) and np.allclose(local[i], s / max(1, s.sum()))


def test_save_load_round_trip_without_pickle(tmp_path, trace, model):
    path = model.save(tmp_path / "p.npz")
    with np.load(path, allow_pickle=False) as data:
        assert "meta" in data.files
    again = Predictor.load(path)
    assert again.meta == model.meta
    assert evaluate(trace, again, baselines=False) == evaluate(trace, model, baselines=False)
    with pytest.raises(SimulatorError, match="not a predictor file"):
        (tmp_path / "bad.npz").write_bytes(b"nonsense")
        Predictor.load(tmp_path / "bad.npz")


def test_version_and_shape_are_checked(tmp_path, model):
    import json

    path = model.save(tmp_path / "p.npz")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays["meta"]))
    meta["version"] = 99
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "v.npz", **arrays)
    with pytest.raises(SimulatorError, match="version 99"):
        Predictor.load(tmp_path / "v.npz")
    with pytest.raises(SimulatorError, match="train one on this model's trace"):
        model.check_shape({"decoder": (4, 8)}, "p.npz")


def test_learned_predicts_only_for_held_out_groups(trace):
    settings = Settings(speculation="learned", cache="25%", prefetch_gate="off")  # every named expert issued
    sim = Simulation(trace, settings)
    _, planner, _, _ = sim._parts(settings)
    spec = planner.spec
    assert "trained on 2 of 4 sequences" in spec.note
    stream = sim.stream
    prefetched_groups = set()
    for ls in range(stream.n_layer_steps):
        if planner.plan(ls).prefetches:
            prefetched_groups.add(int(stream.pass_group[stream.ls_pass[ls]]))
    assert prefetched_groups and prefetched_groups <= spec.heldout
    result = sim.run(bounds=False)
    assert result.summary["speculation_note"] == spec.note


def test_predictor_file_from_another_trace_predicts_everywhere(tmp_path, trace, model):
    path = model.save(tmp_path / "p.npz")
    other = like_trace(tmp_path / "o", "mixtral-8x7b", seqs=2, decode_tokens=8, seed=9)
    out = tmp_path / "r.json"
    assert main(["simulate", str(other), "--speculation", "learned", "--predictor", str(path), "--no-bounds",
                 "--json", str(out)]) == 0
    import json

    assert "another trace" in json.loads(out.read_text())["speculation_note"]
    same = Learned.from_settings(Layout.from_meta(trace.meta), Settings(speculation="learned", predictor=str(path)),
                                 trace)
    assert same.heldout is not None and len(same.heldout) == 2


def test_missing_predictor_is_one_line(tmp_path, capsys):
    layout = Layout.from_meta(open_trace(make_trace(tmp_path / "t", seqs=1, new_tokens=2)).meta)
    with pytest.raises(SimulatorError, match="needs a trained predictor: pass --predictor"):
        Learned.from_settings(layout, Settings(speculation="learned"), None)
    assert main(["simulate", str(tmp_path / "t"), "--speculation", "learned", "--predictor",
                 str(tmp_path / "none.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "predictor file not found" in err[0]


def test_predictor_command_trains_saves_and_reports(tmp_path, trace, capsys):
    out = tmp_path / "p.npz"
    assert main(["predictor", "train", str(trace.path), "-o", str(out), "--steps", "30", "--quiet"]) == 0
    assert out.is_file()
    assert main(["predictor", "eval", str(trace.path), str(out)]) == 0
    text = capsys.readouterr().out
    assert "learned" in text and "transition" in text and "eam" in text
    assert main(["predictor", "train", str(trace.path)]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("like", ["mixtral-8x7b", "flame-moe-290m"])
def test_learned_top1_beats_transition_on_like_traces(tmp_path, like):
    trace = open_trace(like_trace(tmp_path / like, like))
    (j1, *_rest) = evaluate(trace, train(trace))
    assert j1["learned_top1"] > j1["transition_top1"]


@pytest.mark.slow
def test_executor_drives_learned_with_a_predictor(tmp_path):
    torch = pytest.importorskip("torch")
    import copy

    from pregate.executor.live import live_layout
    from pregate.executor.run import OffloadedModel, forward_logits, generate, load, prompt_ids

    small = dict(vocab_size=256, d_model=32, n_layers=4, n_heads=2, d_ff=64, dense_d_ff=64, top_k=2, max_seq_len=128)
    loaded = load("pregate-moe-tiny", True, "float32", 5, small)
    layout, _ = live_layout(loaded)
    trace = open_trace(make_trace(tmp_path / "t", seqs=4, prompt_len=0, new_tokens=12, layers=layout.n_layers,
                                  experts=int(layout.experts[0]), top_k=int(layout.top_k[0]), ahead=0))
    path = train(trace, steps=20).save(tmp_path / "p.npz")
    ids = prompt_ids(loaded, limit=2, max_tokens=10)
    ref = copy.deepcopy(loaded)
    tokens = generate(ref, ids, 1, 5, "cpu")
    settings = Settings(cache="25%", speculation="learned", predictor=str(path))
    run = OffloadedModel(copy.deepcopy(loaded), settings, poison=True)
    assert run.generate(ids, 5) == tokens
    assert torch.equal(run.logits(ids[0], tokens[0]), forward_logits(ref, ids[0], tokens[0], "cpu"))
    s = run.runtime.summary()
    assert s["prefetches"] > 0
    with pytest.raises(SimulatorError, match="needs a trained predictor"):
        OffloadedModel(copy.deepcopy(loaded), Settings(cache="25%", speculation="learned"))
