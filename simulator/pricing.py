"""Pricing a trace's routing at another model's size (``--price-as MODEL`` / ``--model-config FILE``).

Why: routing is what a trace records and what is expensive to get (a real
model, run on real text); sizes are what decide whether offloading hurts. A
small model trained on two CPU cores routes with real structure, but its
experts are a few hundred kilobytes, so on any GPU nothing is worth
prefetching. Pricing keeps the trace's expert choices, token for token, and
takes everything the cost model charges for from a known model whose routing
topology is the same: bytes per expert, d_model, d_ff, activation, the dense
(non-expert) weights and the blocks between MoE layers. The answer is then
"what these routing decisions would cost at that model's size", and every
output says so: "routing of X, priced as Y".

The topology must match stack by stack (MoE layers, experts per layer,
top-k): otherwise the expert ids of the trace mean nothing for the target. A
stack the target has and the trace lacks (Switch's encoder, when the trace
is of a decoder-only model) is not priced, and the label says so.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

from pregate.simulator.errors import SimulatorError
from pregate.traces import StackMeta, TraceMeta
from pregate.traces.errors import TraceError
from pregate.traces.importers.model_shapes import (KNOWN_MODELS, ModelShape, bytes_per_dtype, dense_bytes,
                                                   expert_params, known_model, load_model_config)

CONFIG_SUFFIXES = (".toml", ".json")


class PricingError(SimulatorError):
    """A model to price as that is unknown, incomplete, or of another routing topology."""


@dataclass(frozen=True)
class Target:
    """The model whose sizes price the routing."""

    name: str  # as shown: "mixtral-8x7b", or the config's name
    shape: ModelShape
    source: str  # "known model" or the config file's path


def is_config_path(spec: str) -> bool:
    return Path(spec).suffix.lower() in CONFIG_SUFFIXES or "/" in spec


def _short_name(shape: ModelShape, fallback: str) -> str:
    for short, data in KNOWN_MODELS.items():
        if data["model_id"] == shape.model_id:
            return short
    return fallback


def resolve_target(spec: str) -> Target:
    """A known model (short name or Hugging Face id) or a model config file (TOML or JSON)."""
    spec = spec.strip()
    if not spec:
        raise PricingError("--price-as needs a model name or a model config file")
    try:
        if is_config_path(spec):
            path = Path(spec)
            shape = load_model_config(path)
            missing = [k for k in ("d_model", "d_ff", "experts", "top_k") if getattr(shape, k) is None]
            if shape.stacks is None and shape.moe_layers is None:
                missing.append("moe_layers (or stacks)")
            if missing:
                raise PricingError(f"{path}: a model config to price as needs {', '.join(missing)}")
            if shape.stacks is None:
                shape = replace(shape, stacks={"decoder": shape.moe_layers})
            else:
                shape = replace(shape, stacks={n: (v if v is not None else shape.moe_layers)
                                               for n, v in shape.stacks.items()})
                if any(v is None for v in shape.stacks.values()):
                    raise PricingError(f"{path}: every stack needs its number of MoE layers")
            return Target(shape.model_id or path.stem, shape, str(path))
        shape = known_model(spec)
    except TraceError as exc:
        raise PricingError(str(exc).replace("--model-config", "--model-config FILE")) from None
    return Target(_short_name(shape, spec), shape, "known model")


def _topology(stack: str, layers: int, experts: int, top_k: int) -> str:
    return f"{stack} {layers} MoE layers x {experts} experts, top-{top_k}"


def check_topology(meta: TraceMeta, target: Target) -> list[str]:
    """Raise (one line, naming the difference) unless every stack of the trace matches the target's.

    Returns the target's stacks that the trace lacks (priced as absent).
    """
    shape = target.shape
    stacks = shape.stacks or {}
    for name, s in meta.stacks.items():
        theirs = stacks.get(name)
        if theirs is None:
            raise PricingError(
                f"cannot price the routing of {meta.model_id} as {target.name}: the trace has a {name} stack "
                f"({_topology(name, s.moe_layers, s.experts, s.top_k)}) and {target.name} has none "
                f"(it has {', '.join(stacks) or 'no stacks'})")
        wanted = (theirs, shape.experts, shape.top_k)
        have = (s.moe_layers, s.experts, s.top_k)
        if wanted != have:
            diffs = [f"{label} {a} vs {b}" for label, a, b in zip(("MoE layers", "experts per layer", "top-k"),
                                                                 have, wanted) if a != b]
            raise PricingError(
                f"cannot price the routing of {meta.model_id} as {target.name}: routing topology differs in the "
                f"{name} stack ({'; '.join(diffs)}; trace vs {target.name}); choose a model with "
                f"{_topology(name, *have)} or describe one with --model-config FILE")
    return [n for n in stacks if n not in meta.stacks]


def priced_meta(meta: TraceMeta, target: Target) -> TraceMeta:
    """The trace's metadata with every size the cost model reads taken from ``target``."""
    absent = check_topology(meta, target)
    shape = target.shape
    activation = shape.activation or "relu"
    dtype = shape.dtype or "bfloat16"
    params = expert_params(shape.d_model, shape.d_ff, activation)
    stacks = {}
    for name, s in meta.stacks.items():
        blocks = shape.block_indices.get(name) or s.block_indices
        stacks[name] = StackMeta(s.moe_layers, s.experts, s.top_k, list(blocks))
    extra = dict(meta.extra) if isinstance(meta.extra, dict) else {}
    extra.pop("blocks", None)  # the target's block indices say how many blocks there are
    extra.update(routing_of=meta.model_id, priced_as=target.name, priced_as_source=target.source,
                 priced_stacks_absent=absent)
    return replace(
        meta, stacks=stacks, d_model=shape.d_model, d_ff=shape.d_ff, activation=activation,
        gating=shape.gating or meta.gating, expert_params=params, bytes_per_expert=bytes_per_dtype(params),
        dense_bytes_per_layer=dense_bytes(shape, dtype), dtype=dtype, extra=extra,
    )


def price_stream(stream, spec: str):
    """The request stream with priced metadata (the requests, i.e. the routing, are the same arrays)."""
    if not spec:
        return stream
    meta = stream.meta
    if isinstance(meta.extra, dict) and meta.extra.get("priced_as_spec") == spec:
        return stream
    priced = priced_meta(meta, resolve_target(spec))
    priced.extra["priced_as_spec"] = spec
    return replace(stream, meta=priced)


def display_name(model_id: str) -> str:
    """A trace's model as people say it: a local folder ("runs/pregate-moe-tiny") by its last part."""
    if model_id.startswith(("runs/", "./", "/", "~")):
        return Path(model_id).name or model_id
    return model_id


def label(routing_of: str, priced_as: str | None, absent: list[str] | None = None) -> str:
    """The phrase every output carries: ``routing of X, priced as Y``."""
    routing_of = display_name(routing_of)
    if not priced_as:
        return f"routing of {routing_of}, priced as {routing_of} (the trace's own sizes)"
    text = f"routing of {routing_of}, priced as {priced_as}"
    if absent:
        text += f" ({', '.join(absent)} not in the trace, not priced)"
    return text


def meta_label(meta: TraceMeta) -> str:
    extra = meta.extra if isinstance(meta.extra, dict) else {}
    return label(extra.get("routing_of", meta.model_id), extra.get("priced_as"), extra.get("priced_stacks_absent"))


def identity(spec: str) -> str:
    """What a sweep key must change with: the name of a known model, the bytes of a config file."""
    if not spec:
        return ""
    if is_config_path(spec) and Path(spec).is_file():
        return "file:" + hashlib.sha256(Path(spec).read_bytes()).hexdigest()[:32]
    return "model:" + spec.strip().lower()


def check_trace(meta: TraceMeta, spec: str) -> None:
    """Refuse, before any work, a target whose topology does not match the trace."""
    if spec:
        check_topology(meta, resolve_target(spec))



MODEL_CONFIG_HELP = ("price the routing as the model this config file describes (TOML/JSON: d_model, d_ff, "
                     "activation, experts, top_k, moe_layers or stacks, dense_params, dtype); same as --price-as FILE")


def spec_from_flags(price_as: str | None, model_config: str | None) -> str:
    """One pricing spec from ``--price-as`` and ``--model-config`` (giving both is refused)."""
    if price_as and model_config:
        raise PricingError("give --price-as MODEL or --model-config FILE, not both")
    if model_config:
        if not Path(model_config).is_file():
            raise PricingError(f"model config not found: {model_config}")
        return str(model_config)
    return price_as or ""


def expert_size_known(meta: TraceMeta) -> bool:
    """Whether ``meta`` gives the bytes of one expert (per dtype, or its parameter count)."""
    return any(int(b) > 0 for b in (meta.bytes_per_expert or {}).values()) or int(meta.expert_params or 0) > 0


def require_expert_size(meta: TraceMeta, where: str = "the trace") -> None:
    """Refuse to price a trace whose experts have no known size.

    Every cost the simulator reports (bytes moved, copy time, tokens per second,
    the ratio to the references) scales with the bytes of one expert. An
    imported trace without the model's shape records none, and priced as zero
    bytes it would give a confident, meaningless answer (nothing moved, the
    reference reached). So simulate, sweep and recommend stop here instead, and
    say how to supply it.
    """
    if expert_size_known(meta):
        return
    raise SimulatorError(
        f"{where} ({meta.model_id}) has no expert size, so every byte and time would be zero: describe the model "
        "with --model-config FILE (d_model, d_ff, activation; or --model NAME) when importing it, or price it as "
        "a known model with --price-as MODEL"
    )
