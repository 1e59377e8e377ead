"""The executor generates exactly what the all-resident model generates, whatever the cache does."""

from __future__ import annotations

import copy

import pytest
import torch

from pregate.executor.run import OffloadedModel, forward_logits, generate, load, prompt_ids
from pregate.simulator.settings import Settings

SMALL_SWITCH = dict(
    vocab_size=512, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=8, num_decoder_layers=8,
    num_sparse_encoder_layers=4, num_sparse_decoder_layers=4,
)
SMALL_MOE = dict(vocab_size=256, d_model=32, n_layers=4, n_heads=2, d_ff=64, dense_d_ff=64, top_k=2, max_seq_len=128)

SETTINGS = [
    Settings(cache="0"),  # every expert streams through a bypass buffer
    Settings(cache="3", cache_policy="lru"),
    Settings(cache="25%", speculation="layer_minus_1", batch_size=2),
    Settings(cache="10", speculation="multi_layer", cache_policy="lfu"),
    Settings(cache="9", speculation="adaptive", cache_policy="least-stale", per_layer=True),
    Settings(cache="6", speculation="transition", cache_policy="fifo", buffering="cpu_compute"),
    Settings(cache="8", speculation="layer_minus_1", buffering="static-layers"),
    Settings(cache="4", speculation="eam", cache_policy="lfu-decay", batch_size=2),
    Settings(buffering="resident"),
]


_REFERENCES: dict = {}


def _reference(loaded, ids, batch_size, new_tokens):
    """The all-resident tokens and logits. They depend only on the model, prompts, batch size and length, not on
    the cache settings, so each is computed once per module and shared by the settings that need it (the
    offloaded run is always fresh)."""
    key = (id(loaded), tuple(map(tuple, ids)), batch_size, new_tokens)
    if key not in _REFERENCES:
        ref = copy.deepcopy(loaded)
        tokens = generate(ref, ids, batch_size, new_tokens, "cpu")
        logits = forward_logits(ref, ids[0], tokens[0], "cpu")
        _REFERENCES[key] = (loaded, tokens, logits)  # holding the model keeps its id from being reused
    return _REFERENCES[key][1:]


@pytest.fixture(scope="module")
def switch():
    loaded = load("google/switch-base-8", True, "float32", 3, SMALL_SWITCH)
    ids = prompt_ids(loaded, limit=3, max_tokens=12)
    return loaded, ids


@pytest.fixture(scope="module")
def small_moe():
    loaded = load("pregate-moe-tiny", True, "float32", 5, SMALL_MOE)
    ids = prompt_ids(loaded, limit=3, max_tokens=12)
    return loaded, ids


def _check(loaded, ids, settings, new_tokens=6):
    tokens, logits = _reference(loaded, ids, settings.batch_size, new_tokens)
    run = OffloadedModel(copy.deepcopy(loaded), settings, poison=True)
    got = run.generate(ids, new_tokens)
    assert got == tokens
    # stronger than equal tokens: bit-identical logits, teacher-forced over the continuation
    assert torch.equal(run.logits(ids[0], tokens[0]), logits)
    s = run.runtime.summary()
    assert s["requests"] == s["hits"] + s["late_hits"] + s["misses"]
    assert s["late_hits"] == 0  # copies complete synchronously on the cpu
    return s


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: f"{s.speculation}-{s.cache_policy}-{s.cache}-{s.buffering}")
def test_switch_offloaded_equals_resident(switch, settings):
    loaded, ids = switch
    s = _check(loaded, ids, settings)
    if settings.buffering == "resident":
        assert s["misses"] == 0 and s["bytes_moved"] == 0
    elif settings.cache == "0":
        assert s["hits"] == 0 and s["bypasses"] == s["misses"] > 0


@pytest.mark.parametrize("settings", SETTINGS[:5], ids=lambda s: f"{s.speculation}-{s.cache_policy}-{s.cache}")
def test_small_moe_offloaded_equals_resident(small_moe, settings):
    loaded, ids = small_moe
    _check(loaded, ids, settings)


def test_small_moe_tokens_are_not_degenerate(small_moe):
    loaded, ids = small_moe
    tokens, _ = _reference(loaded, ids, 1, 6)
    assert len({t for row in tokens for t in row}) > 2


def test_tiny_mixtral_offloaded_equals_resident():
    loaded = load("tiny-mixtral", True, "float32", 0)
    ids = prompt_ids(loaded, limit=2, max_tokens=10)
    _check(loaded, ids, Settings(cache="6", speculation="layer_minus_1"), new_tokens=4)


def test_int8_and_int4_compare_report_small_errors(switch):
    from pregate.executor.run import compare_with_reference

    loaded, ids = switch
    errors = {}
    for form in ("int8", "int4"):
        run = OffloadedModel(copy.deepcopy(loaded), Settings(cache="25%", compression=form))
        generated = run.generate(ids[:1], 6)
        # the reference loads the same seeded model again
        cmp = compare_with_reference(run, "google/switch-base-8", random_init=True, dtype="float32", seed=3,
                                     ids=ids[:1], generated=generated, max_new_tokens=6, overrides=SMALL_SWITCH)
        assert 0 < cmp["logits_relative_error"] < 0.2
        assert 0 <= cmp["teacher_forced_token_agreement"] <= 1
        errors[form] = cmp["logits_relative_error"]
    assert errors["int8"] < errors["int4"]


def test_live_model_refuses_future_policies(switch):
    from pregate.errors import PregateError

    loaded, _ = switch
    with pytest.raises(PregateError, match="future"):
        OffloadedModel(copy.deepcopy(loaded), Settings(cache_policy="belady"))
