"""How sources become a trace: the field mapping and every cleaning choice.

Kept apart from the cleaning code so that the command line, the format modules
and the metadata (which records the choices) share one definition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pregate.traces.errors import TraceError
from pregate.traces.schema import STACKS

ON_DUPLICATE = ("error", "first", "last")
ON_MISMATCH = ("fail", "drop", "keep-aligned")
ON_MISSING = ("drop", "hole")
ORDERS = ("record", "execution")
DEFAULT_LAYER_PATTERN = r"layer[_-]?(\d+)"
DEFAULT_PART_ROWS = 1_000_000
ROLES = ("seq", "layer", "experts", "probs", "token", "pos", "phase", "stack", "dropped")
# Joins the fields of a composite sequence key into its label ("gsm8k/0").
SEQ_JOIN = "/"


@dataclass
class ColumnMap:
    """Source field for each trace column; ``None`` means the field of the same name, if present.

    ``seq`` may name several fields separated by commas: together they are the
    sequence key (two datasets whose problem ids overlap stay apart).
    """

    seq: str | None = None
    layer: str | None = None
    experts: str | None = None
    probs: str | None = None
    token: str | None = None
    pos: str | None = None
    phase: str | None = None
    stack: str | None = None
    dropped: str | None = None

    def seq_fields(self) -> list[str] | None:
        if self.seq is None:
            return None
        names = [part.strip() for part in self.seq.split(",")]
        if not all(names):
            raise TraceError(f"--seq {self.seq!r}: empty field name (give FIELD or FIELD,FIELD,...)")
        return names

    def pick(self, role: str, available: list[str], file: Path) -> str | None:
        """The field that holds ``role`` in a file with ``available`` fields, or None."""
        explicit = getattr(self, role)
        if explicit is not None:
            if explicit not in available:
                raise TraceError(
                    f"{file}: no field '{explicit}' for {role} (fields: {', '.join(available) or 'none'})"
                )
            return explicit
        return role if role in available else None


def parse_layer_map(text: str | None) -> dict[int, int] | None:
    """``--layer-map 2:0,3:1,...``: source layer number -> MoE layer."""
    if text is None:
        return None
    out: dict[int, int] = {}
    for item in text.split(","):
        src, sep, dst = item.partition(":")
        if not sep or not src.strip().isdigit() or not dst.strip().isdigit():
            raise TraceError(f"--layer-map: '{item}' is not SRC:DST with whole numbers (e.g. 2:0,3:1)")
        if int(src) in out:
            raise TraceError(f"--layer-map: source layer {int(src)} is mapped twice")
        out[int(src)] = int(dst)
    if len(set(out.values())) != len(out):
        raise TraceError("--layer-map: two source layers map to the same MoE layer")
    return out


@dataclass
class ImportOptions:
    """Everything that decides how sources become a trace (recorded in the metadata)."""

    format: str
    columns: ColumnMap = field(default_factory=ColumnMap)
    layer_value: int | None = None  # one MoE layer for every record
    layer_pattern: str = DEFAULT_LAYER_PATTERN  # else the layer from the file name
    layer_from_path: str | None = None  # else from the whole path (folders too)
    layer_offset: int = 0  # source layer number - offset = MoE layer
    layer_map: dict[int, int] | None = None  # or an explicit map
    rows_per_seq: int | None = None  # fixed blocks of rows are sequences
    order: str = "record"  # "execution": records in the order the model ran
    default_stack: str = "decoder"
    on_duplicate: str = "error"
    on_mismatch: str = "fail"
    on_missing: str = "drop"
    scores_are_probs: bool = False  # csv-dense
    expert_columns: str | None = None  # csv-dense: regex whose group 1 is the expert id
    prob_bits: int = 10
    part_rows: int = DEFAULT_PART_ROWS
    overwrite: bool = False

    def __post_init__(self) -> None:
        for name, value, allowed in (("--on-duplicate", self.on_duplicate, ON_DUPLICATE),
                                     ("--on-mismatch", self.on_mismatch, ON_MISMATCH),
                                     ("--on-missing", self.on_missing, ON_MISSING),
                                     ("--order", self.order, ORDERS),
                                     ("--default-stack", self.default_stack, STACKS)):
            if value not in allowed:
                raise TraceError(f"{name} must be one of {', '.join(allowed)}")
        if self.on_missing == "hole" and self.on_mismatch == "drop":
            raise TraceError("--on-missing hole keeps tokens that miss layers; it contradicts --on-mismatch drop")
        if self.part_rows < 1:
            raise TraceError("--part-rows must be at least 1")
        if not 1 <= self.prob_bits <= 23:
            raise TraceError("--prob-bits must be 1..23")
        for flag, pattern in (("--layer-pattern", self.layer_pattern), ("--expert-columns", self.expert_columns),
                              ("--layer-from-path", self.layer_from_path)):
            if pattern is None:
                continue
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise TraceError(f"{flag}: not a valid regular expression ({exc})") from None
            if compiled.groups < 1:
                raise TraceError(f"{flag}: the pattern needs a group that captures the number, e.g. 'layer(\\d+)'")
        if self.layer_value is not None and self.layer_value < 0:
            raise TraceError(f"--layer must not be negative, got {self.layer_value}")
        if self.layer_offset and self.layer_map:
            raise TraceError("give --layer-offset or --layer-map, not both")
        if self.rows_per_seq is not None:
            if self.rows_per_seq < 1:
                raise TraceError(f"--rows-per-seq must be at least 1, got {self.rows_per_seq}")
            if self.columns.seq is not None:
                raise TraceError("--rows-per-seq makes each block of rows a sequence; it cannot be combined with --seq")
            if self.order == "execution":
                raise TraceError("--rows-per-seq and --order execution are two ways to find tokens; give one")

    @property
    def aligning(self) -> bool:
        """Whether layers that disagree are cut to what can be trusted (not failed, not dropped)."""
        return self.on_mismatch == "keep-aligned" or self.on_missing == "hole"

    def map_layer(self, number: int) -> int | None:
        """The MoE layer of a source layer number (None: not in --layer-map)."""
        if self.layer_map is not None:
            return self.layer_map.get(number)
        return number - self.layer_offset

    @property
    def remaps_layers(self) -> bool:
        return bool(self.layer_offset) or self.layer_map is not None
