"""What an imported trace says about its model: known shapes, config files, flags.

A routing log records which experts were chosen, rarely what the model looks
like; the simulator needs the shape (experts, layers, top-k, expert size) to
cost transfers. The shape comes, in increasing priority, from a known model
name (``--model``), a model config file (``--model-config``, TOML or JSON) and
single flags (``--num-experts``, ``--moe-layers``, ...); what is still missing
is inferred from the data by :mod:`pregate.traces.importers.common`.

The known shapes are written out here as plain data: ``pregate.traces`` is the
base layer and must not import the tracer's adapters, which hold the same facts
as Hugging Face configs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pregate.traces.errors import TraceError
from pregate.traces.schema import STACKS, bytes_per_dtype  # noqa: F401  (re-exported for importers)

DTYPES = ("float32", "bfloat16", "float16", "int8", "int4")
# Bytes per weight of the dense (non-expert) parameters, by storage dtype.
_DENSE_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "int8": 1.0, "int4": 0.5}


def is_gated(activation: str) -> bool:
    """Gated experts (SwiGLU, GeGLU) have three weight matrices instead of two."""
    act = activation.lower()
    return act.endswith("-gated") or act.endswith("glu")


def expert_params(d_model: int, d_ff: int, activation: str) -> int:
    return (3 if is_gated(activation) else 2) * d_model * d_ff


@dataclass
class ModelShape:
    """A (possibly partial) description of the model; ``None`` means "not known yet".

    ``stacks`` maps a stack name to its number of MoE layers (``None``: infer it);
    ``moe_layers`` applies to every stack that does not give its own.
    """

    model_id: str | None = None
    family: str | None = None
    experts: int | None = None
    moe_layers: int | None = None
    top_k: int | None = None
    d_model: int | None = None
    d_ff: int | None = None
    dtype: str | None = None
    gating: str | None = None
    activation: str | None = None
    stacks: dict[str, int | None] | None = None
    block_indices: dict[str, list[int]] = field(default_factory=dict)
    # Non-expert weights (attention, norms, router, shared experts) per transformer block.
    dense_params: int | None = None
    dense_bytes_per_layer: int | None = None
    tokenizer: str | None = None
    # Parameters of one routed expert where they are not (2 or 3) * d_model * d_ff (biases).
    expert_params: int | None = None

    def merged(self, other: "ModelShape") -> "ModelShape":
        """This shape with every field that ``other`` sets replaced by ``other``'s."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for f in fields(other):
            value = getattr(other, f.name)
            if value is not None and value != {}:
                values[f.name] = value
        if other.moe_layers is not None and other.stacks is None and values["stacks"]:
            # A later "N MoE layers" applies to every stack the earlier shape named.
            values["stacks"] = {name: other.moe_layers for name in values["stacks"]}
        return ModelShape(**values)


def _switch(experts: int, large: bool = False) -> dict[str, Any]:
    n = 12 if large else 6
    return dict(
        model_id=f"google/switch-{'large' if large else 'base'}-{experts}",
        family="switch",
        experts=experts,
        top_k=1,
        d_model=1024 if large else 768,
        d_ff=4096 if large else 3072,
        dtype="float32",
        gating="top1-softmax",
        activation="relu",
        stacks={"encoder": n, "decoder": n},
        # Every other block is an MoE layer: 1, 3, 5, ...
        block_indices={"encoder": list(range(1, 2 * n, 2)), "decoder": list(range(1, 2 * n, 2))},
        # Average over all blocks of both stacks: self-attention (4 d^2), cross-attention
        # in the decoder (4 d^2), the dense FFN of every other block (2 d d_ff).
        # switch-base: (12*4 + 12*8) * 768^2 / 24 + 2*768*3072 / 2 = 5.9M.
        dense_params=(2 * n * 4 + 2 * n * 8) * (1024 if large else 768) ** 2 // (4 * n)
        + (1024 if large else 768) * (4096 if large else 3072),
    )


def _decoder(model_id, family, layers, experts, top_k, d_model, d_ff, renorm, dense_params) -> dict[str, Any]:
    return dict(
        model_id=model_id,
        family=family,
        experts=experts,
        top_k=top_k,
        d_model=d_model,
        d_ff=d_ff,
        dtype="bfloat16",
        gating="topk-softmax-renorm" if renorm else "topk-softmax",
        activation="silu-gated",
        stacks={"decoder": layers},
        block_indices={"decoder": list(range(layers))},
        dense_params=dense_params,
    )


# Published shapes. dense_params counts attention, norms and router per block
# (and Qwen1.5's always-active shared expert), not embeddings or the output head.
KNOWN_MODELS: dict[str, dict[str, Any]] = {
    **{f"switch-base-{e}": _switch(e) for e in (8, 16, 32, 64, 128, 256)},
    "switch-large-128": _switch(128, large=True),
    # q, o: 4096^2 each; k, v: 4096*1024 each (8 KV heads); router 4096*8.
    "mixtral-8x7b": _decoder("mistralai/Mixtral-8x7B-v0.1", "mixtral", 32, 8, 2, 4096, 14336, True, 41_984_000),
    # q, k, v, o: 2048^2 each; router 2048*64.
    "olmoe-1b-7b": _decoder("allenai/OLMoE-1B-7B-0924", "olmoe", 16, 64, 8, 2048, 1024, False, 16_920_000),
    # attention 4*2048^2, shared expert 3*2048*5632, router 2048*60.
    "qwen1.5-moe-a2.7b": _decoder("Qwen/Qwen1.5-MoE-A2.7B", "qwen2_moe", 24, 60, 4, 2048, 1408, False, 51_520_000),
    # q, o: 2048*4096 each; k, v: 2048*512 each; router 2048*128.
    "qwen3-30b-a3b": _decoder("Qwen/Qwen3-30B-A3B", "qwen3_moe", 48, 128, 8, 2048, 768, True, 19_140_000),
    # dense_params below are derived: (all parameters - routed experts - embeddings - output head) / blocks
    # of the published architecture built on PyTorch's meta device (tracer/adapters); they hold the
    # attention (MLA for DeepSeek), norms, router, the shared experts (always resident, run by every
    # token) and the leading dense blocks' MLPs, averaged over the blocks.
    "deepseek-v2-lite": {
        **_decoder("deepseek-ai/DeepSeek-V2-Lite", "deepseek_v2", 26, 64, 6, 2048, 1408, False, 33_044_536),
        "block_indices": {"decoder": list(range(1, 27))},  # block 0 is dense (first_k_dense_replace 1)
    },
    "deepseek-v3": {
        **_decoder("deepseek-ai/DeepSeek-V3", "deepseek_v3", 58, 256, 8, 7168, 2048, True, 250_234_023),
        "gating": "topk-group-limited-sigmoid-renorm",
        "block_indices": {"decoder": list(range(3, 61))},  # blocks 0..2 are dense
    },
    # experts carry biases: 3 d f + 2 f + d parameters each.
    "gpt-oss-20b": {
        **_decoder("openai/gpt-oss-20b", "gpt_oss", 24, 32, 4, 2880, 2880, True, 26_648_216),
        "activation": "swiglu-clamped-gated",
        "expert_params": 3 * 2880 * 2880 + 2 * 2880 + 2880,
    },
}


def known_model(name: str) -> ModelShape:
    """The shape of a published model, by short name or Hugging Face id (any case)."""
    key = name.strip().lower()
    for short, data in KNOWN_MODELS.items():
        if key in (short, data["model_id"].lower(), data["model_id"].lower().split("/")[-1]):
            return ModelShape(**data)
    raise TraceError(f"unknown model '{name}' (known: {', '.join(KNOWN_MODELS)}); describe it with --model-config")


_CONFIG_KEYS = (
    "model_id", "name", "family", "experts", "moe_layers", "top_k", "d_model", "d_ff", "dtype",
    "gating", "activation", "stacks", "dense_params", "dense_bytes_per_layer", "tokenizer",
)


def _positive(value: Any, key: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise TraceError(f"{where}: '{key}' must be a positive integer, got {value!r}")
    return value


def load_model_config(path: str | Path) -> ModelShape:
    """Read a model config file (``.toml`` or ``.json``) into a partial shape.

    Keys: model_id (or name), family, experts, moe_layers, top_k, d_model, d_ff,
    dtype, gating, activation, tokenizer, dense_params or dense_bytes_per_layer,
    and optionally ``stacks``: ``{decoder = 32}`` or ``{encoder = {moe_layers = 6}, ...}``.
    """
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"model config not found: {path}")
    text = path.read_bytes()
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text.decode())
        else:
            data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise TraceError(f"{path}: not valid {kind} ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise TraceError(f"{path}: a model config must be a table of keys")
    unknown = sorted(set(data) - set(_CONFIG_KEYS))
    if unknown:
        hint = " (this looks like a Hugging Face config.json; write the pregate keys instead)" if "model_type" in data else ""
        raise TraceError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(_CONFIG_KEYS)}{hint}")
    where = str(path)
    shape = ModelShape()
    shape.model_id = data.get("model_id", data.get("name"))
    for key in ("family", "gating", "activation", "tokenizer"):
        if key in data:
            if not isinstance(data[key], str):
                raise TraceError(f"{where}: '{key}' must be a string")
            setattr(shape, key, data[key])
    for key in ("experts", "moe_layers", "top_k", "d_model", "d_ff"):
        if key in data:
            setattr(shape, key, _positive(data[key], key, where))
    for key in ("dense_params", "dense_bytes_per_layer"):  # 0 is allowed: "no dense weights"
        if key in data:
            setattr(shape, key, 0 if data[key] == 0 else _positive(data[key], key, where))
    if "dtype" in data:
        shape.dtype = check_dtype(data["dtype"], where)
    if "stacks" in data:
        stacks = data["stacks"]
        if not isinstance(stacks, dict) or not stacks:
            raise TraceError(f"{where}: 'stacks' must map encoder/decoder to their MoE layers")
        shape.stacks = {}
        for name, value in stacks.items():
            if name not in STACKS:
                raise TraceError(f"{where}: unknown stack '{name}' (known: {', '.join(STACKS)})")
            if isinstance(value, dict):
                extra = sorted(set(value) - {"moe_layers", "block_indices"})
                if extra:
                    raise TraceError(f"{where}: stack '{name}' has unknown key(s) {', '.join(extra)}")
                value_layers = value.get("moe_layers")
                if "block_indices" in value:
                    shape.block_indices[name] = [int(b) for b in value["block_indices"]]
            else:
                value_layers = value
            shape.stacks[name] = None if value_layers is None else _positive(value_layers, f"stacks.{name}", where)
    return shape


def check_dtype(value: Any, where: str = "--dtype") -> str:
    if value not in DTYPES:
        raise TraceError(f"{where}: dtype must be one of {', '.join(DTYPES)}, got {value!r}")
    return value


def dense_bytes(shape: ModelShape, dtype: str) -> int:
    if shape.dense_bytes_per_layer is not None:
        return int(shape.dense_bytes_per_layer)
    if shape.dense_params is not None:
        return int(shape.dense_params * _DENSE_BYTES[dtype])
    return 0


def build_shape(model: str | None = None, config: str | Path | None = None, flags: ModelShape | None = None) -> ModelShape:
    """Known model, then config file, then flags: each later source overrides the earlier."""
    shape = known_model(model) if model else ModelShape()
    if config:
        shape = shape.merged(load_model_config(config))
    if flags is not None:
        if flags.dtype is not None:
            check_dtype(flags.dtype)
        shape = shape.merged(flags)
    return shape
