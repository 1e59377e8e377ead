"""Model shapes for imported traces: known models, config files, flags, and the layering rule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pregate.cli import main
from pregate.traces import TraceError, validate_trace
from pregate.traces.importers import KNOWN_MODELS, ModelShape, build_shape, known_model
from pregate.traces.importers.model_shapes import bytes_per_dtype, expert_params, load_model_config

FIX = Path(__file__).parent / "fixtures" / "import"


def test_expert_sizes():
    base = known_model("switch-base-8")
    params = expert_params(base.d_model, base.d_ff, base.activation)
    assert params == 2 * 768 * 3072  # 4.72M: 9.4 MB in bf16, 18.9 MB in fp32
    assert bytes_per_dtype(params)["bfloat16"] == 9_437_184 and bytes_per_dtype(params)["float32"] == 18_874_368
    mixtral = known_model("mistralai/Mixtral-8x7B-v0.1")
    assert expert_params(mixtral.d_model, mixtral.d_ff, mixtral.activation) == 3 * 4096 * 14336
    assert known_model("Qwen3-30B-A3B").stacks == {"decoder": 48}
    assert known_model("switch-large-128").stacks == {"encoder": 12, "decoder": 12}


def test_known_shapes_agree_with_the_tracer_variants():
    from pregate.tracer.models import find_variant
    from pregate.traces.importers.model_shapes import expert_params

    for short, data in KNOWN_MODELS.items():
        cls, variant = find_variant(data["model_id"])
        summary = cls.summarize(cls.build_config(dict(variant.config)))
        assert (data["d_model"], data["d_ff"], data["experts"], data["top_k"]) == \
            (summary["d_model"], summary["d_ff"], summary["experts"], summary["top_k"]), short
        layers = "+".join(str(n) for n in data["stacks"].values())
        assert layers == summary["moe_layers"], short
        params = data.get("expert_params") or expert_params(data["d_model"], data["d_ff"], data["activation"])
        assert params == summary["expert_params"], short
        if "deepseek" in short:
            assert data["block_indices"]["decoder"] == cls.moe_blocks(cls.build_config(dict(variant.config)))


def test_config_then_flags_override(tmp_path):
    shape = build_shape("mixtral-8x7b", FIX / "tiny-moe.toml", ModelShape(moe_layers=3, dtype="int8"))
    assert (shape.experts, shape.d_model, shape.stacks, shape.dtype) == (4, 64, {"decoder": 3}, "int8")
    assert build_shape("switch-base-16", None, ModelShape(moe_layers=2)).stacks == {"encoder": 2, "decoder": 2}
    cfg = tmp_path / "m.json"
    cfg.write_text(json.dumps({"experts": 8, "stacks": {"encoder": {"moe_layers": 2}, "decoder": 2}}))
    assert load_model_config(cfg).stacks == {"encoder": 2, "decoder": 2}
    cfg.write_text(json.dumps({"model_type": "mixtral", "hidden_size": 4096}))
    with pytest.raises(TraceError, match="Hugging Face config.json"):
        load_model_config(cfg)
    cfg.write_text(json.dumps({"experts": 0}))
    with pytest.raises(TraceError, match="'experts' must be a positive integer"):
        load_model_config(cfg)
    with pytest.raises(TraceError, match="dtype must be one of"):
        build_shape(None, None, ModelShape(dtype="fp8"))


def test_encoder_decoder_import(tmp_path, capsys):
    """Switch-style logs: a stack field, encoder rows default to prefill, step numbering per stack."""
    src = tmp_path / "switch.jsonl"
    rows = []
    for stack, n_tok in (("encoder", 3), ("decoder", 2)):
        for pos in range(n_tok):
            for layer in range(6):
                rows.append({"seq": 0, "stack": stack.upper(), "pos": pos, "layer": layer,
                             "experts": [(pos + layer) % 8], "probs": [0.9]})
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    rc = main(["import", "--format", "jsonl", str(src), "-o", str(tmp_path / "t"), "--model", "switch-base-8"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "2 sequence" not in out and "prefill 3, decode 2" in out
    trace = validate_trace(tmp_path / "t")
    frame = trace.collect()
    assert trace.meta.stacks["encoder"].block_indices == [1, 3, 5, 7, 9, 11]
    assert trace.meta.bytes_per_expert["float32"] == 18_874_368 and trace.meta.dense_bytes_per_layer > 0
    enc = frame.filter(frame["stack"] == "encoder")
    dec = frame.filter(frame["stack"] == "decoder")
    assert set(enc["phase"]) == {"prefill"} and set(enc["step"]) == {0}
    assert sorted(set(dec["step"])) == [1, 2]
    src.write_text(json.dumps({"seq": 0, "stack": "middle", "layer": 0, "experts": [1]}) + "\n")
    rc = main(["import", "--format", "jsonl", str(src), "-o", str(tmp_path / "u")])
    assert rc == 2 and "line 1: stack 'middle' is not 'encoder' or 'decoder'" in capsys.readouterr().err
    src.write_text(json.dumps({"seq": 0, "stack": "encoder", "layer": 0, "experts": [1, 2]}) + "\n")
    rc = main(["import", "--format", "jsonl", str(src), "-o", str(tmp_path / "v"), "--model", "mixtral-8x7b"])
    assert rc == 2 and "record of stack 'encoder', but the model has only decoder" in capsys.readouterr().err


def test_traces_layer_imports_nothing_else_of_pregate():
    code = (
        "import sys, pregate.traces.importers as m, pregate.traces.cli_import;"
        "from pregate.traces.importers import jsonl, csv_dense, parquet, common, model_shapes;"
        "bad = [n for n in sys.modules if n.startswith('pregate.') and not n.startswith('pregate.traces')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
