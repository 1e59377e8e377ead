"""The tracer records what the model really did, and what later routers would pick.

The checks are independent of the tracer's own capture: "witness" hooks on
the expert modules see which experts each forward pass actually ran (after
capacity drops), and the later layers' router modules are called directly on
the captured router inputs. Rows are mapped to (seq, step, pos) by simple
loops written from the format's rules, not by the tracer's vectorised code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from pregate.cli import main
from pregate.traces import open_trace, validate_trace
from pregate.tracer.models import build_random, find_variant, known_variants
from pregate.tracer.run import BatchTracer, TraceSettings, make_meta, trace

from conftest import SMALL_SWITCH, TINY_FAMILIES


def _parent_block(model, router):
    for module in model.modules():
        if getattr(module, "router", None) is router or getattr(module, "gate", None) is router:
            return module
    raise AssertionError("router has no parent block")


class Witness:
    """Per (stack, layer), per forward: the router's input and the experts the expert module ran."""

    def __init__(self, loaded):
        self.loaded = loaded
        self.inputs: dict = {}
        self.used: dict = {}
        self.handles = []
        for site in loaded.adapter.sites():
            key = (site.stack, site.layer)
            experts = _parent_block(loaded.model, site.router).experts
            self.handles.append(site.router.register_forward_pre_hook(self._grab_input(key)))
            self.handles.append(experts.register_forward_pre_hook(self._grab_used(key), with_kwargs=True))

    def _grab_input(self, key):
        def hook(module, args):
            self.inputs.setdefault(key, []).append(args[0].detach().reshape(-1, args[0].shape[-1]).clone())

        return hook

    def _grab_used(self, key):
        def hook(module, args, kwargs):
            selected = args[1] if len(args) > 1 else list(kwargs.values())[0]
            if selected.dim() == 3:  # Switch: one-hot dispatch mask (N, 1, E), zero row = dropped
                mask = selected.reshape(selected.shape[0], -1)
                used = torch.where(mask.sum(-1) > 0, mask.argmax(-1), -1)[:, None]
            else:  # top-k families: expert ids (N, k)
                used = selected
            self.used.setdefault(key, []).append(used.detach().clone())

        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def expected_rows(loaded, witness, input_ids, mask, output, first_seq=0):
    """{(seq, stack, step, pos, layer): (used experts, router input)} from the format's rules."""
    input_ids, mask, output = input_ids.cpu().numpy(), mask.cpu().numpy(), output.cpu().numpy()
    batch, width = input_ids.shape
    eos = loaded.model.config.eos_token_id
    enc_dec = loaded.adapter.encoder_decoder
    generated = output[:, 1:] if enc_dec else output[:, width:]
    rows = {}
    for (stack, layer), calls in witness.used.items():
        for call, used in enumerate(calls):
            per_seq = used.shape[0] // batch
            hidden = witness.inputs[(stack, layer)][call]
            for b in range(batch):
                gen = list(generated[b])
                gen_len = gen.index(eos) + 1 if eos in gen else len(gen)
                real = int(mask[b].sum())
                for s in range(per_seq):
                    i = b * per_seq + s
                    if stack == "encoder" or (not enc_dec and call == 0):
                        if not mask[b, s]:
                            continue
                        step, pos = 0, (s if enc_dec else s - (width - real))
                    elif enc_dec:
                        step, pos = call + 1, call
                        if step > gen_len:
                            continue
                    else:
                        step, pos = call, real + call - 1
                        if step > gen_len - 1:
                            continue
                    rows[(first_seq + b, stack, step, pos, layer)] = (used[i].tolist(), hidden[i])
    return rows


def run_witnessed(loaded, prompts_ids, max_new_tokens=6, ahead=3):
    # Record one runner-up beyond top-k so that the ranking below the router's pick is checked too.
    settings = TraceSettings(model=loaded.model_id, out=Path("unused"), max_new_tokens=max_new_tokens, ahead=ahead,
                             prob_bits=23, ahead_width=loaded.adapter.top_k() + 1)
    meta = make_meta(loaded, settings, ["x"], "bytes")
    tracer = BatchTracer(loaded, settings, meta)
    input_ids, mask = tracer.pad_batch(prompts_ids)
    witness = Witness(loaded)
    from pregate.tracer.capture import RoutingRecorder

    recorder = RoutingRecorder(loaded.adapter)
    with recorder:
        output = tracer.generate(input_ids, mask)
    witness.close()
    table = tracer.rows(recorder, 0, input_ids.numpy(), mask.numpy(), output.numpy())
    frame = pl.from_arrow(table).with_columns(pl.col("stack").cast(pl.String))
    return frame, expected_rows(loaded, witness, input_ids, mask, output), meta


def prompts(vocab, lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [list(rng.integers(3, vocab, n)) for n in lengths]


def check_against_witness(loaded, frame, expected, meta):
    got = {
        (r["seq"], r["stack"], r["step"], r["pos"], r["layer"]): r
        for r in frame.iter_rows(named=True)
    }
    assert set(got) == set(expected), "recorded rows differ from the tokens the model processed"
    sites = {(s.stack, s.layer): s for s in loaded.adapter.sites()}
    checked_ahead = 0
    for key, (used, hidden) in expected.items():
        row = got[key]
        if used == [-1]:  # Switch capacity drop: no expert ran
            assert row["dropped"]
        else:
            assert not row["dropped"]
            assert sorted(row["experts"]) == sorted(used), key
            assert row["experts"] == used or loaded.adapter.top_k() > 1
        stack, layer = key[1], key[4]
        for j, (ahead, ahead_p) in enumerate(zip(row["ahead"], row["ahead_probs"]), start=1):
            router = sites[(stack, layer + j)].router
            with torch.no_grad():
                if loaded.adapter.encoder_decoder:
                    _, _, logits = router(hidden[None, None, :])
                    probs = torch.softmax(logits.float(), -1).reshape(-1)
                    chosen = [int(probs.argmax())]
                else:
                    logits, _, ids = router(hidden[None, :])
                    probs = torch.softmax(logits.float(), -1).reshape(-1)
                    chosen = ids.reshape(-1).tolist()
            width = meta.ahead_k(stack)
            assert width == loaded.adapter.top_k() + 1
            top_p, top_i = probs.topk(width)
            assert ahead[: len(chosen)] == chosen, (key, j)  # the router's own pick(s) first
            assert ahead == top_i.tolist(), (key, j)
            np.testing.assert_allclose(ahead_p, top_p.tolist(), rtol=1e-5)
            checked_ahead += 1
    assert checked_ahead > 0


def test_switch_records_the_experts_the_model_ran(small_switch):
    frame, expected, meta = run_witnessed(small_switch, prompts(512, [9, 4, 13]))
    assert set(frame["stack"]) == {"encoder", "decoder"}
    assert frame.filter(pl.col("stack") == "encoder")["phase"].unique().to_list() == ["prefill"]
    check_against_witness(small_switch, frame, expected, meta)


def test_switch_capacity_drops_recorded_truthfully():
    loaded = build_random("google/switch-base-8", seed=2, overrides={**SMALL_SWITCH, "expert_capacity": 2})
    frame, expected, meta = run_witnessed(loaded, prompts(512, [30, 25]), max_new_tokens=3)
    dropped = frame.filter(pl.col("dropped"))
    assert dropped.height > 0, "a capacity of 2 over 30 tokens must drop some"
    # every dropped row names the expert the router chose, not expert 0 by default
    assert dropped["experts"].list.first().n_unique() > 1
    check_against_witness(loaded, frame, expected, meta)
    # decode steps route one token per sequence: capacity never binds there
    assert not frame.filter(pl.col("phase") == "decode")["dropped"].any()


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_topk_families_record_the_experts_the_model_ran(name):
    loaded = build_random(name, seed=3)
    frame, expected, meta = run_witnessed(loaded, prompts(loaded.model.config.vocab_size, [7, 3, 5]), max_new_tokens=5)
    assert frame["experts"].list.len().unique().to_list() == [loaded.adapter.top_k()]
    check_against_witness(loaded, frame, expected, meta)


def _published_variants():
    """Every known variant with a published size, one case each. Switch builds one module per expert, so its
    64-expert and larger variants take seconds each to build even on the meta device: those are slow."""
    cases = []
    for cls, variant in known_variants():
        if variant.params is None:
            continue
        many = cls.__name__ == "SwitchAdapter" and dict(variant.config).get("num_experts", 0) >= 64
        cases.append(pytest.param(cls, variant, id=variant.name, marks=pytest.mark.slow if many else ()))
    return cases


@pytest.mark.parametrize("cls,variant", _published_variants())
def test_known_shapes_match_published_sizes(cls, variant):
    """Every known variant's architecture (built on the meta device: no memory) has its published size."""
    config = cls.build_config(dict(variant.config))
    with torch.device("meta"):
        model = cls.model_class()(config)
    params = sum(p.numel() for p in model.parameters())
    assert abs(params / variant.params - 1) < 0.03, (variant.name, params)


def test_switch_base_8_real_shape():
    cls, variant = find_variant("switch-base-8")
    config = cls.build_config(dict(variant.config))
    assert config.d_ff == 3072 and config.encoder_sparse_step == 2
    with torch.device("meta"):
        model = cls.model_class()(config)
    adapter = cls(model)
    described = adapter.describe()
    assert described["stacks"]["encoder"]["block_indices"] == [1, 3, 5, 7, 9, 11]
    assert described["stacks"]["decoder"]["moe_layers"] == 6
    assert described["expert_params"] == 4_718_592  # 4.72M parameters per expert
    assert described["bytes_per_expert"]["bfloat16"] == 9_437_184


def _count_rows(folder):
    return open_trace(folder).num_rows


def test_trace_command_on_tiny_mixtral(tmp_path, capsys):
    out = tmp_path / "mx"
    assert main(["trace", "--model", "tiny-mixtral", "--random-init", "--out", str(out), "--limit", "5",
                 "--max-new-tokens", "4", "--batch-size", "2", "--quiet"]) == 0
    trace_ = validate_trace(out)
    assert len(trace_.files) == 3
    frame = trace_.collect()
    assert frame["seq"].n_unique() == 5
    assert frame.filter(pl.col("phase") == "decode")["step"].max() == 3


def test_resume_after_interruption_gives_the_same_rows(tmp_path, monkeypatch):
    settings = dict(model="tiny-olmoe", random_init=True, limit=7, max_new_tokens=4, batch_size=2, progress=False)
    whole = trace(TraceSettings(out=tmp_path / "whole", **settings))

    real_run = BatchTracer.run
    calls = {"n": 0}

    def dying_run(self, first_seq, ids):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_run(self, first_seq, ids)

    monkeypatch.setattr(BatchTracer, "run", dying_run)
    with pytest.raises(KeyboardInterrupt):
        trace(TraceSettings(out=tmp_path / "cut", **settings))
    monkeypatch.setattr(BatchTracer, "run", real_run)
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]

    trace(TraceSettings(out=tmp_path / "cut", resume=True, **settings))
    assert open_trace(tmp_path / "cut").collect().equals(open_trace(whole).collect())


def test_missing_weights_suggest_random_init(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    assert main(["trace", "--model", "google/switch-base-8", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no local copy of 'google/switch-base-8'") and "--random-init" in err
    assert "\n" not in err


def test_unknown_model_for_random_init(tmp_path, capsys):
    assert main(["trace", "--model", "switch-base-7", "--random-init", "--out", str(tmp_path / "o")]) == 2
    assert "known model name" in capsys.readouterr().err


def test_local_checkpoint_loads_offline(tmp_path, small_switch):
    """A saved checkpoint folder loads through the safetensors path and traces."""
    folder = tmp_path / "ckpt"
    small_switch.model.save_pretrained(folder, safe_serialization=True)
    assert any(p.suffix == ".safetensors" for p in folder.iterdir())
    out = tmp_path / "t"
    assert main(["trace", "--model", str(folder), "--out", str(out), "--limit", "2", "--max-new-tokens", "2",
                 "--quiet"]) == 0
    assert validate_trace(out).meta.family == "switch"


def test_bad_input_file(tmp_path, capsys):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"text": "hello"}\n{"prompt": "no text field"}\n')
    assert main(["trace", "--model", "tiny-mixtral", "--random-init", "--input", str(bad),
                 "--out", str(tmp_path / "o")]) == 2
    assert "p.jsonl:2: no string field 'text'" in capsys.readouterr().err


@pytest.mark.parametrize("device,message", [("gpu", "unknown device 'gpu'"), ("cuda", "no CUDA device")])
def test_bad_device_is_one_line(tmp_path, capsys, device, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(["trace", "--model", "tiny-mixtral", "--random-init", "--out", str(tmp_path / "o"),
                 "--device", device]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
