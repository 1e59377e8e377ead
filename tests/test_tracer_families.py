"""DeepSeek-V2/V3 (routed plus shared experts, group-limited routing) and GPT-OSS, on tiny random
configs: the trace records the experts the model ran, best first, and the later routers' own picks."""

from __future__ import annotations

import pytest
import torch

from pregate.tracer.models import build_random
from test_tracer import check_against_witness, prompts, run_witnessed  # noqa: F401  (shared witnesses)

NEW_FAMILIES = ["tiny-deepseek-v2", "tiny-deepseek-v3", "tiny-gpt-oss"]


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW_FAMILIES)
def test_new_families_record_the_experts_the_model_ran(name):
    loaded = build_random(name, seed=3)
    adapter = loaded.adapter
    frame, expected, meta = run_witnessed(loaded, prompts(loaded.model.config.vocab_size, [7, 3, 5]), max_new_tokens=5)
    got = {(r["seq"], r["stack"], r["step"], r["pos"], r["layer"]): r for r in frame.iter_rows(named=True)}
    assert set(got) == set(expected)
    sites = {(s.stack, s.layer): s for s in adapter.sites()}
    k = adapter.top_k()
    checked = 0
    for key, (used, hidden) in expected.items():
        row = got[key]
        assert sorted(row["experts"]) == sorted(used), key
        assert row["probs"] == sorted(row["probs"], reverse=True) and all(0 <= p <= 1 for p in row["probs"])
        for j, ahead in enumerate(row["ahead"], start=1):
            with torch.no_grad():
                _, weights, ids = sites[("decoder", key[4] + j)].router(hidden[None, :])
            order = torch.argsort(weights.reshape(-1), descending=True, stable=True)
            assert ahead[:k] == ids.reshape(-1)[order].tolist(), (key, j)  # the later router's own choice
            checked += 1
    assert checked


@pytest.mark.slow
def test_deepseek_group_limit_binds_and_is_kept():
    """With one group of two allowed, both chosen experts are always one group's, although the
    plain top-2 by score would often straddle two groups."""
    loaded = build_random("tiny-deepseek-v2", seed=3, overrides={"topk_group": 1})
    frame, expected, _ = run_witnessed(loaded, prompts(512, [9, 6]), max_new_tokens=4)
    sites = {(s.stack, s.layer): s for s in loaded.adapter.sites()}
    per_group = loaded.model.config.n_routed_experts // loaded.model.config.n_group
    differs = 0
    for r in frame.iter_rows(named=True):
        assert len({e // per_group for e in r["experts"]}) == 1
        hidden = expected[(r["seq"], r["stack"], r["step"], r["pos"], r["layer"])][1]
        logits = sites[("decoder", r["layer"])].router(hidden[None, :])[0]
        plain = torch.softmax(logits.float(), -1).topk(2).indices.reshape(-1).tolist()
        differs += sorted(plain) != sorted(r["experts"])
    assert differs > 0


@pytest.mark.parametrize("name", ["tiny-deepseek-v2", "tiny-deepseek-v3"])
def test_shared_experts_are_dense_weight_not_routed(name):
    loaded = build_random(name, seed=0)
    d = loaded.adapter.describe()
    c = loaded.model.config
    assert d["stacks"]["decoder"]["experts"] == c.n_routed_experts  # shared ones are not routed experts
    assert d["stacks"]["decoder"]["block_indices"] == list(range(c.first_k_dense_replace, c.num_hidden_layers))
    shared = d["extra"]["shared_expert_params_per_layer"]
    assert shared == 3 * c.hidden_size * c.moe_intermediate_size * c.n_shared_experts
    actual = sum(p.numel() for layer in loaded.model.model.layers if hasattr(layer.mlp, "shared_experts")
                 for p in layer.mlp.shared_experts.parameters())
    assert actual == shared * d["stacks"]["decoder"]["moe_layers"]
    # dense bytes per block hold at least the shared experts (always resident, run by every token)
    assert d["dense_bytes_per_layer"] * d["extra"]["blocks"] >= actual * 4
    assert d["expert_params"] == 3 * c.hidden_size * c.moe_intermediate_size


def test_gpt_oss_expert_size_counts_biases():
    loaded = build_random("tiny-gpt-oss", seed=0)
    d = loaded.adapter.describe()
    experts = loaded.model.model.layers[0].mlp.experts
    per_expert = sum(p.numel() for p in experts.parameters()) // loaded.model.config.num_local_experts
    assert d["expert_params"] == per_expert
