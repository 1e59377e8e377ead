"""pregate import --format sglang-routed-experts: generate responses made here, checked cell by cell."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from pregate.cli import main
from pregate.traces import validate_trace

LAYERS, K, EXPERTS = 4, 2, 8  # block 0 dense (all -1), blocks 1..3 MoE


def response(rng, rid: str, prompt: int, completion: int, *, full: bool = False, ids: bool = True) -> tuple[dict, np.ndarray]:
    rows = prompt + completion - (0 if full else 1)
    grid = np.stack([np.stack([rng.choice(EXPERTS, K, replace=False) for _ in range(LAYERS)]) for _ in range(rows)])
    grid = grid.astype(np.int32)
    grid[:, 0, :] = -1
    item = {"text": "...", "meta_info": {"id": rid, "prompt_tokens": prompt, "completion_tokens": completion,
                                         "finish_reason": {"type": "length"},
                                         "routed_experts": base64.b64encode(grid.astype("<i4").tobytes()).decode()}}
    if ids:
        item["input_ids"] = [int(t) for t in rng.integers(3, 1000, prompt)]
        item["output_ids"] = [int(t) for t in rng.integers(3, 1000, completion)]
    return item, grid


def config(tmp_path, blocks: bool = True):
    path = tmp_path / "model.toml"
    text = f"experts = {EXPERTS}\ntop_k = {K}\nd_model = 64\nd_ff = 32\nactivation = \"silu-gated\"\n"
    text += "[stacks.decoder]\nmoe_layers = 3\n" + ("block_indices = [1, 2, 3]\n" if blocks else "")
    path.write_text(text)
    return path


def check(out, made):
    trace = validate_trace(out)
    labels = trace.meta.extra["imported"]["sequences"]
    assert trace.meta.stacks["decoder"].block_indices == [1, 2, 3]
    frame = trace.collect()
    seen = 0
    for r in frame.iter_rows(named=True):
        item, grid = made[labels[r["seq"]]]
        prompt = item["meta_info"]["prompt_tokens"]
        assert r["experts"] == grid[r["pos"], r["layer"] + 1].tolist()
        assert r["phase"] == ("prefill" if r["pos"] < prompt else "decode")
        assert r["step"] == (0 if r["pos"] < prompt else r["pos"] - prompt + 1)
        if "input_ids" in item:
            tokens = item["input_ids"] + item["output_ids"]
            assert r["token"] == tokens[r["pos"]]
        assert r["probs"] == pytest.approx([1 / K] * K)
        seen += 1
    assert seen == sum(g.shape[0] * 3 for _, g in made.values())


def test_jsonl_and_json_list_of_responses(tmp_path, capsys):
    rng = np.random.default_rng(0)
    made = {}
    lines = []
    for rid, p, c in (("req-a", 5, 4), ("req-b", 3, 6)):
        item, grid = response(rng, rid, p, c)
        made[rid] = (item, grid)
        lines.append(json.dumps(item))
    (tmp_path / "responses.jsonl").write_text("\n".join(lines) + "\n")
    item, grid = response(rng, "req-c", 4, 2, full=True)
    made["req-c"] = (item, grid)
    (tmp_path / "batch.json").write_text(json.dumps([item]))
    rc = main(["import", "--format", "sglang-routed-experts", str(tmp_path / "responses.jsonl"),
               str(tmp_path / "batch.json"), "-o", str(tmp_path / "t"), "--model-config", str(config(tmp_path))])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "MoE layers are blocks 1..3" in out and "1/2" in out
    check(tmp_path / "t", made)


def test_dense_layers_inferred_from_the_arrays(tmp_path, capsys):
    rng = np.random.default_rng(1)
    item, grid = response(rng, "only", 3, 3, ids=False)
    (tmp_path / "r.json").write_text(json.dumps(item))
    rc = main(["import", "--format", "sglang-routed-experts", str(tmp_path / "r.json"), "-o", str(tmp_path / "t"),
               "--model-config", str(config(tmp_path, blocks=False))])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "layers with routed experts in the responses" in out
    check(tmp_path / "t", {"only": (item, grid)})


def test_bad_responses_give_one_line(tmp_path, capsys):
    rng = np.random.default_rng(2)
    item, _ = response(rng, "x", 3, 3)
    cfg = str(config(tmp_path))

    def fails(payload, *extra) -> str:
        (tmp_path / "bad.json").write_text(json.dumps(payload))
        rc = main(["import", "--format", "sglang-routed-experts", str(tmp_path / "bad.json"), "-o",
                   str(tmp_path / "o"), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, err
        return err[0]

    assert "--model NAME" in fails(item)
    short = json.loads(json.dumps(item))
    short["meta_info"]["prompt_tokens"] = 7
    assert "do not split into (tokens, layers, top-2)" in fails(short, "--model-config", cfg)
    assert "--enable-return-routed-experts" in fails({"text": "no routing"}, "--model-config", cfg)
    broken = json.loads(json.dumps(item))
    broken["meta_info"]["routed_experts"] = "not base64!"
    assert "not valid base64" in fails(broken, "--model-config", cfg)
