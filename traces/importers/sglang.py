"""SGLang's routed experts: generate responses with ``meta_info.routed_experts``.

An SGLang server started with ``--enable-return-routed-experts`` answers a
request that sets ``return_routed_experts`` with the experts its routers chose
for every token the model ran: ``meta_info.routed_experts`` is base64 of a
flat int32 array ordered by token, layer and top-k slot, with -1 in a layer
that has no routed experts (DeepSeek's leading dense layers). The files are
JSON (one response, or a list of them) or JSON Lines (one response a line).

The array holds no shape, so the model's comes from ``--model`` or
``--model-config`` (top-k at least; the stack's ``block_indices`` say which
array layers are MoE layers, else the layers that are -1 for every token are
taken as dense). Rows: the prompt's ``prompt_tokens`` tokens (prefill, step 0),
then one per generated token that the model ran (decode steps 1, 2, ...; the
last generated token is never run, so an array of ``prompt + completion - 1``
rows is complete, one of ``prompt + completion`` also covers it). Token ids come
from ``input_ids`` / ``output_ids`` when the response has them. No
probabilities are returned: each chosen expert gets 1/k.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

import numpy as np
import polars as pl

from pregate.traces.errors import TraceError
from pregate.traces.importers.common import ImportOptions, Source, expand_sources
from pregate.traces.importers.model_shapes import ModelShape

SUFFIXES = (".json", ".jsonl", ".ndjson")


def _responses(path: Path) -> list[dict]:
    text = path.read_text()
    if not text.strip():
        return []
    try:
        data = json.loads(text)
        items = data if isinstance(data, list) else [data]
    except ValueError:
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except ValueError as exc:
                raise TraceError(f"{path}: line {n}: not valid JSON ({exc})") from None
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise TraceError(f"{path}: response {i} is not a JSON object")
    return items


def _decode(value, where: str) -> np.ndarray:
    if not isinstance(value, str):
        raise TraceError(f"{where}: meta_info.routed_experts must be a base64 string, got {type(value).__name__}")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TraceError(f"{where}: meta_info.routed_experts is not valid base64 ({exc})") from None
    if len(raw) % 4:
        raise TraceError(f"{where}: meta_info.routed_experts holds {len(raw)} bytes, not whole int32 values")
    return np.frombuffer(raw, dtype="<i4")


def _count(meta: dict, key: str, where: str) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TraceError(f"{where}: meta_info.{key} must be a whole number, got {value!r}")
    return value


def _ids(item: dict, key: str, n: int) -> list[int] | None:
    value = item.get(key)
    if isinstance(value, list) and len(value) >= n and all(isinstance(v, int) for v in value[:n]):
        return value[:n]
    return None


def read(paths, opts: ImportOptions, shape: ModelShape) -> Source:
    files = expand_sources(paths, SUFFIXES, "JSON")
    k = shape.top_k
    if k is None:
        raise TraceError("sglang-routed-experts needs the model's shape to read the flat array: pass --model NAME, "
                         "--model-config FILE or --top-k K")
    blocks = list(shape.block_indices.get("decoder", []))
    moe_layers = (shape.stacks or {}).get("decoder") or shape.moe_layers
    labels: list[tuple[int, int, str]] = []
    chunks: dict[str, list] = {c: [] for c in ("__file", "__rec", "seq", "phase", "layer", "pos", "token", "experts")}
    dense_seen: set[int] | None = None
    layer_count = None
    for fi, path in enumerate(files):
        for ri, item in enumerate(_responses(path)):
            meta = item.get("meta_info")
            where = f"{path}: response {ri}"
            if not isinstance(meta, dict) or "routed_experts" not in meta:
                raise TraceError(f"{where}: no meta_info.routed_experts (start the server with "
                                 "--enable-return-routed-experts and send return_routed_experts: true)")
            rid = meta.get("id")
            label = str(rid) if rid is not None else f"{path.name}#{ri}"
            where = f"{path}: response {ri} (id {label})"
            flat = _decode(meta["routed_experts"], where)
            prompt, completion = _count(meta, "prompt_tokens", where), _count(meta, "completion_tokens", where)
            found = None
            for rows in (prompt + completion - 1, prompt + completion):
                if rows > 0 and flat.size % (rows * k) == 0:
                    layers = flat.size // (rows * k)
                    if (layer_count is None or layers == layer_count) and (not blocks or layers > max(blocks)):
                        found = (rows, layers)
                        break
            if found is None:
                raise TraceError(
                    f"{where}: {flat.size} expert ids do not split into (tokens, layers, top-{k}) for "
                    f"{prompt} prompt + {completion} generated tokens"
                    + (f" and {layer_count} layers as in the earlier responses" if layer_count else "")
                    + "; check --model / --top-k"
                )
            rows, layers = found
            layer_count = layers
            grid = flat.reshape(rows, layers, k)
            empty = (grid < 0).all(axis=(0, 2))
            partial = ((grid < 0).any(axis=2) & ~(grid < 0).all(axis=2)).any(axis=0)
            if partial.any():
                bad = int(np.flatnonzero(partial)[0])
                raise TraceError(f"{where}: layer {bad} has -1 in some top-k slots but not all; "
                                 "a token either has its k experts in a layer or none")
            dense_seen = set(np.flatnonzero(empty).tolist()) if dense_seen is None else dense_seen & set(np.flatnonzero(empty).tolist())
            labels.append((fi, ri, label))
            tokens = np.full(rows, -1, np.int64)
            prompt_ids, output_ids = _ids(item, "input_ids", prompt), _ids(item, "output_ids", max(0, rows - prompt))
            if prompt_ids is not None:
                tokens[:prompt] = prompt_ids
            if output_ids is not None and rows > prompt:
                tokens[prompt:] = output_ids
            pos = np.repeat(np.arange(rows), layers)
            layer = np.tile(np.arange(layers), rows)
            chunks["__file"].append(np.full(rows * layers, fi, np.uint32))
            chunks["__rec"].append(np.full(rows * layers, ri, np.int64))
            chunks["seq"].append(np.full(rows * layers, len(labels) - 1, np.int64))
            chunks["phase"].append(np.where(pos < prompt, 0, 1).astype(np.int8))
            chunks["layer"].append(layer)
            chunks["pos"].append(pos)
            chunks["token"].append(np.repeat(tokens, layers))
            chunks["experts"].append(grid.reshape(rows * layers, k))
    if not labels:
        raise TraceError(f"no responses in {', '.join(str(f) for f in files)}")
    notes = []
    if blocks:
        moe_blocks = blocks
        source = "the model's block indices"
    else:
        moe_blocks = [b for b in range(layer_count) if b not in (dense_seen or set())]
        source = "layers with routed experts in the responses"
        if moe_layers is not None and len(moe_blocks) != moe_layers:
            raise TraceError(f"the responses have routed experts in {len(moe_blocks)} of {layer_count} layers, but the "
                             f"model has {moe_layers} MoE layers; give the blocks in --model-config (stacks.decoder.block_indices)")
    notes.append(f"{layer_count} layers per token in the arrays; MoE layers are blocks "
                 f"{moe_blocks[0]}..{moe_blocks[-1]} ({len(moe_blocks)}, from {source})")
    moe_of = np.full(layer_count, -1, np.int64)
    moe_of[moe_blocks] = np.arange(len(moe_blocks))
    cat = {c: np.concatenate(v) for c, v in chunks.items()}
    keep = moe_of[cat["layer"]] >= 0
    experts = cat["experts"][keep]
    hole = (experts < 0).all(axis=1)
    if hole.any():
        notes.append(f"{int(hole.sum())} (token, MoE layer) pair(s) without routed experts (-1) are left out")
        if opts.on_missing != "hole":
            notes.append("pass --on-missing hole to keep those tokens in the other layers")
    keep_idx = np.flatnonzero(keep)[~hole]
    n = len(keep_idx)
    frame = pl.DataFrame({
        "__file": cat["__file"][keep_idx],
        "__rec": cat["__rec"][keep_idx],
        "seq": cat["seq"][keep_idx],
        "stack": pl.Series([None] * n, dtype=pl.String),
        "phase": pl.Series(np.array(["prefill", "decode"])[cat["phase"][keep_idx]]),
        "layer": moe_of[cat["layer"][keep_idx]],
        "__src_layer": cat["layer"][keep_idx],
        "pos": cat["pos"][keep_idx],
        "token": pl.Series(cat["token"][keep_idx]).replace(-1, None),
        "experts": pl.Series("experts", cat["experts"][keep_idx].astype(np.int64)).cast(pl.List(pl.Int64)),
        "probs": pl.Series([None] * n, dtype=pl.List(pl.Float64)),
        "dropped": pl.Series([None] * n, dtype=pl.Boolean),
    })
    names = {(f, r): label for f, r, label in labels}

    def locate(file_index: int, record: int) -> str:
        return f"{files[file_index]}: response {record} (id {names.get((file_index, record), '?')})"

    return Source(files=files, frame=frame, locate=locate, has_pos=True, has_probs=False, notes=notes,
                  seq_labels=[label for _, _, label in labels], block_indices={"decoder": list(moe_blocks)})
