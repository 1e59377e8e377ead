"""Columns and file-level metadata of trace format v1.

Why a long layout (one row per token and MoE layer) rather than one row per
token with per-layer lists: the simulator replays requests in (token, layer)
order, the analysis groups by layer, and polars handles both directly. Sorted
by the key, the repeated columns (seq, stack, phase, step, pos, token) compress
to almost nothing, which keeps a row under 8 bytes on disk.

Probabilities are float32 in memory but, by default, rounded to 10 mantissa
bits (the precision of float16, relative error below 0.05%) before writing:
the low bytes then compress away. ``TraceMeta.prob_mantissa_bits`` records the
rounding (23 means exact float32).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from pregate.traces.errors import TraceError

FORMAT_VERSION = 1
META_KEY = b"pregate.trace"
STACKS = ("encoder", "decoder")
PHASES = ("prefill", "decode")
# The identity of a row: no two rows of a trace share it.
KEY_COLUMNS = ("seq", "stack", "step", "pos", "layer")
DEFAULT_AHEAD = 3


def arrow_schema() -> pa.Schema:
    """The Arrow schema every part has, column by column (see traces/README.md)."""
    return pa.schema(
        [
            pa.field("seq", pa.int32(), nullable=False),
            pa.field("stack", pa.dictionary(pa.int8(), pa.string()), nullable=False),
            pa.field("phase", pa.dictionary(pa.int8(), pa.string()), nullable=False),
            pa.field("step", pa.int32(), nullable=False),
            pa.field("pos", pa.int32(), nullable=False),
            pa.field("layer", pa.int16(), nullable=False),
            pa.field("token", pa.int32(), nullable=True),
            pa.field("experts", pa.list_(pa.int16()), nullable=False),
            pa.field("probs", pa.list_(pa.float32()), nullable=False),
            pa.field("dropped", pa.bool_(), nullable=False),
            pa.field("ahead", pa.list_(pa.list_(pa.int16())), nullable=True),
            pa.field("ahead_probs", pa.list_(pa.list_(pa.float32())), nullable=True),
        ]
    )


COLUMNS = tuple(arrow_schema().names)


def bytes_per_dtype(params: int) -> dict[str, int]:
    """``bytes_per_expert`` of the metadata: one expert of ``params`` weights in each storage dtype.

    int4 packs two weights a byte; the group-quantised formats add one fp16
    scale per 64 weights (the executor's host copies have exactly these sizes).
    """
    scales = (params // 64) * 2
    return {
        "float32": params * 4,
        "bfloat16": params * 2,
        "float16": params * 2,
        "int8": params + scales,
        "int4": params // 2 + scales,
    }


@dataclass
class StackMeta:
    """One stack of the model (encoder or decoder) as the trace sees it."""

    moe_layers: int
    experts: int
    top_k: int
    # Index of the transformer block that holds each MoE layer (Switch: 1, 3, 5, ...).
    block_indices: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("moe_layers", "experts", "top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise TraceError(f"stack metadata: '{name}' must be a positive integer, got {value!r}")
        if self.top_k > self.experts:
            raise TraceError(f"stack metadata: top_k {self.top_k} exceeds experts {self.experts}")


@dataclass
class TraceMeta:
    """File-level metadata: what the simulator needs to cost the model, and provenance.

    Byte counts are per expert (all its weight matrices) for each dtype, so the
    simulator can cost transfers without knowing the expert's internal layout.
    """

    model_id: str
    family: str
    stacks: dict[str, StackMeta]
    d_model: int
    d_ff: int
    activation: str
    gating: str  # e.g. "top1-softmax", "topk-softmax", "topk-softmax-renorm"
    expert_params: int
    bytes_per_expert: dict[str, int]
    dense_bytes_per_layer: int
    dtype: str = "float32"
    ahead_distance: int = DEFAULT_AHEAD
    # Experts stored per ``ahead`` entry, best first by router probability; None
    # means top-k. The tracer keeps at least 2 so that top-1 models can be
    # scored (and prefetched for) beyond the router's single pick.
    ahead_width: int | None = None
    capacity: dict[str, Any] = field(default_factory=dict)
    tokenizer: str = ""
    corpus: str = ""
    seed: int | None = None
    tracer_version: str = ""
    prob_mantissa_bits: int = 10
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.stacks:
            raise TraceError("trace metadata: no stacks (need 'encoder' and/or 'decoder')")
        for name, stack in list(self.stacks.items()):
            if name not in STACKS:
                raise TraceError(f"trace metadata: unknown stack '{name}' (known: {', '.join(STACKS)})")
            if isinstance(stack, dict):
                self.stacks[name] = StackMeta(**stack)
        if not 0 <= self.ahead_distance <= 16:
            raise TraceError(f"trace metadata: ahead_distance must be 0..16, got {self.ahead_distance}")
        if self.ahead_width is not None and not all(self.ahead_width <= s.experts for s in self.stacks.values()):
            raise TraceError(f"trace metadata: ahead_width {self.ahead_width} exceeds the experts of a stack")
        if not 1 <= self.prob_mantissa_bits <= 23:
            raise TraceError(f"trace metadata: prob_mantissa_bits must be 1..23, got {self.prob_mantissa_bits}")

    # ---- convenience views -------------------------------------------------
    @property
    def total_experts(self) -> int:
        """Experts over all MoE layers of all stacks: the size of the expert universe."""
        return sum(s.moe_layers * s.experts for s in self.stacks.values())

    def expert_bytes(self, dtype: str | None = None) -> int:
        key = dtype or self.dtype
        if key not in self.bytes_per_expert:
            raise TraceError(
                f"trace metadata has no expert size for dtype '{key}' "
                f"(has: {', '.join(sorted(self.bytes_per_expert))})"
            )
        return int(self.bytes_per_expert[key])

    def ahead_k(self, stack: str) -> int:
        """Experts per ``ahead`` entry in ``stack``: the stored width, or the stack's top-k."""
        return self.ahead_width or self.stacks[stack].top_k

    # ---- serialisation -----------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "trace") -> "TraceMeta":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise TraceError(f"{where}: metadata is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise TraceError(f"{where}: metadata must be a JSON object")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise TraceError(
                f"{where}: trace format version {version!r} is not supported "
                f"(this pregate reads version {FORMAT_VERSION}); re-record or convert the trace"
            )
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise TraceError(f"{where}: unknown metadata key(s) {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise TraceError(f"{where}: incomplete metadata ({exc})") from None
