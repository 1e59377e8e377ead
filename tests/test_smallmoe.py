"""pregate's own small MoE: it learns, saves and loads exactly, resumes, and traces.

Training tests run the ``micro`` preset, which trains in seconds: they need a
trained model, not a good one. The one test of a real preset (``tiny``, the
README's) is marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pregate.cli import main
from pregate.tracer.smallmoe import SmallMoEConfig, SmallMoEModel, load_small_moe
from pregate.tracer.smallmoe import train as train_module
from pregate.tracer.smallmoe.train import TrainSettings, train
from pregate.traces import validate_trace

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Train on one torch thread: on a shared, loaded CPU two threads spin against other jobs and the same
    30 micro steps took 24-55 s instead of 3 s (the tiny preset: 165-262 s instead of 15 s), measured side by
    side in one process. Results do not depend on it: determinism is checked within one setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


WORDS = "alpha beta gamma delta router expert token layer cache prefetch".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Twenty small files of patterned text: learnable, and enough files for a held-out split."""
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(20):
        lines = [" ".join(WORDS[(i + j + n) % len(WORDS)] for n in range(8)) for j in range(40)]
        (folder / f"doc{i:02d}.txt").write_text("\n".join(lines))
    return folder


def quick(corpus, out, **kw):
    settings = dict(preset="micro", out=out, corpus=[str(corpus)], steps=30, batch_size=4, seq_len=32, lr=3e-3,
                    warmup=5, eval_every=10, eval_windows=8, checkpoint_every=10, progress=False)
    settings.update(kw)
    return TrainSettings(**settings)


def test_loss_falls(corpus, tmp_path):
    log = train(quick(corpus, tmp_path / "m"))
    first = sum(l for _, l in log["loss"][:5]) / 5
    last = sum(l for _, l in log["loss"][-5:]) / 5
    assert last < first - 1.0, (first, last)
    assert log["valid"][-1][1] < log["valid"][0][1]
    assert (tmp_path / "m" / "model.safetensors").is_file()


def test_training_is_deterministic_and_resumes_exactly(corpus, tmp_path, monkeypatch):
    train(quick(corpus, tmp_path / "a"))
    train(quick(corpus, tmp_path / "b"))
    weights_a = (tmp_path / "a" / "model.safetensors").read_bytes()
    assert weights_a == (tmp_path / "b" / "model.safetensors").read_bytes()

    real_batch = train_module._batch

    def dying_batch(data, seed, step, batch, seq):
        if step == 25:
            raise KeyboardInterrupt
        return real_batch(data, seed, step, batch, seq)

    monkeypatch.setattr(train_module, "_batch", dying_batch)
    with pytest.raises(KeyboardInterrupt):
        train(quick(corpus, tmp_path / "c"))
    monkeypatch.setattr(train_module, "_batch", real_batch)
    assert (tmp_path / "c" / "checkpoint.pt").is_file()
    log = train(quick(corpus, tmp_path / "c", resume=True))
    assert log["loss"][-1][0] == 30
    assert (tmp_path / "c" / "model.safetensors").read_bytes() == weights_a


def test_save_and_load_give_identical_logits(tmp_path):
    torch.manual_seed(0)
    model = SmallMoEModel(SmallMoEConfig(vocab_size=300, d_model=32, n_layers=4, n_heads=2, d_ff=48,
                                         num_experts=4, top_k=2)).eval()
    model.save(tmp_path / "m")
    loaded, _ = load_small_moe(tmp_path / "m")
    x = torch.randint(0, 300, (3, 17))
    assert torch.equal(model(x)[0], loaded(x)[0])


def test_generate_with_cache_matches_full_forward():
    """Greedy decoding with a KV cache and left padding equals recomputing from scratch."""
    torch.manual_seed(1)
    model = SmallMoEModel(SmallMoEConfig(vocab_size=200, d_model=32, n_layers=2, n_heads=2, d_ff=32,
                                         num_experts=4)).eval()
    prompt = torch.randint(3, 200, (1, 6))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), prompt], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 6, dtype=torch.long)], 1)
    out = model.generate(padded, mask, max_new_tokens=5, eos_token_id=-1)
    ids = prompt
    for _ in range(5):
        ids = torch.cat([ids, model(ids)[0][:, -1].argmax(-1, keepdim=True)], 1)
    assert out[0, 3:].tolist() == ids[0].tolist()


def _train_and_trace(corpus, tmp_path, capsys, preset: str):
    out = tmp_path / "m"
    assert main(["train", "--preset", preset, "--corpus", str(corpus), "--out", str(out), "--steps", "12",
                 "--batch-size", "4", "--seq-len", "32", "--quiet"]) == 0
    assert "held-out loss" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "pregate_moe" and config["extra"]["preset"] == preset
    trace_dir = tmp_path / "t"
    prompts = tmp_path / "p.txt"
    prompts.write_text("alpha beta gamma\nexpert token layer cache\n")
    assert main(["trace", "--model", str(out), "--input", str(prompts), "--out", str(trace_dir),
                 "--max-new-tokens", "4", "--quiet"]) == 0
    trace = validate_trace(trace_dir)
    assert trace.meta.family == "pregate_moe"
    assert trace.meta.tokenizer != "utf8-bytes+3"  # the model's own BPE tokenizer was used
    return trace


def test_train_command_then_trace_the_model(corpus, tmp_path, capsys):
    trace = _train_and_trace(corpus, tmp_path, capsys, "micro")
    decoder = trace.meta.stacks["decoder"]
    assert (decoder.moe_layers, decoder.experts, decoder.top_k) == (2, 4, 1)  # the micro preset's shape


@pytest.mark.slow
def test_the_readme_preset_trains_and_traces(corpus, tmp_path, capsys):
    """The tiny preset the README trains: switch-base's decoder topology (6 MoE layers x 8 experts, top-1)."""
    decoder = _train_and_trace(corpus, tmp_path, capsys, "tiny").meta.stacks["decoder"]
    assert (decoder.moe_layers, decoder.experts, decoder.top_k) == (6, 8, 1)


def test_training_refuses_a_used_folder_and_a_tiny_corpus(corpus, tmp_path, capsys):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    assert main(["train", "--preset", "micro", "--corpus", str(corpus), "--out", str(tmp_path / "used"),
                 "--quiet"]) == 2
    assert "--resume" in capsys.readouterr().err
    small = tmp_path / "small"
    small.mkdir()
    (small / "a.txt").write_text("hello")
    assert main(["train", "--preset", "micro", "--corpus", str(small), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 2
    assert "at least two readable" in capsys.readouterr().err


def test_split_is_by_name_and_never_empty(tmp_path):
    from pregate.tracer.smallmoe.corpus import read_corpus

    for n in (2, 3, 7):
        folder = tmp_path / f"c{n}"
        folder.mkdir()
        for i in range(n):
            (folder / f"f{i}.txt").write_text(f"text {i}")
        docs = read_corpus([folder])
        held = [d.name for d in docs if d.held_out]
        assert 1 <= len(held) < n
        assert all(d.name.startswith(f"c{n}/") for d in docs)  # names do not depend on where the corpus lies


def test_preset_training_defaults_give_way_to_what_the_caller_names():
    from pregate.tracer.smallmoe.settings import PRESET_TRAINING, preset_settings

    own = preset_settings("mixtral-topo", steps=None, batch_size=None)
    assert (own.steps, own.batch_size, own.threads) == (200, 8, 1) == tuple(
        PRESET_TRAINING["mixtral-topo"][k] for k in ("steps", "batch_size", "threads"))
    named = preset_settings("mixtral-topo", steps=7, threads=2)
    assert (named.steps, named.batch_size, named.threads) == (7, 8, 2)
    tiny = preset_settings("tiny", steps=None)
    assert (tiny.steps, tiny.batch_size, tiny.threads) == (TrainSettings().steps, TrainSettings().batch_size, 0)


def test_train_refuses_a_negative_thread_count(corpus, tmp_path, capsys):
    assert main(["train", "--corpus", str(corpus), "--out", str(tmp_path / "m"), "--threads", "-1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--threads" in err and "Traceback" not in err
