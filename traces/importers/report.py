"""What ``pregate import`` tells the user: counts of everything read, cut, dropped and kept.

Sequences are named by the source's own key (``gsm8k/0``), not by the ids the
trace gives them, so a message can be checked against the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pregate.traces.schema import TraceMeta


@dataclass
class ImportReport:
    """Counts for the summary ``pregate import`` prints."""

    format: str
    files: int = 0
    records: int = 0
    read_sequences: int = 0
    read_tokens: int = 0
    exact_duplicates: int = 0
    conflicting_keys: int = 0
    conflict_records_dropped: int = 0
    mismatched: list[str] = field(default_factory=list)  # one description per affected sequence
    mismatch_sequences: int = 0
    mismatch_records_dropped: int = 0
    mismatch_tokens_dropped: int = 0
    mismatch_sequences_dropped: int = 0
    # keep-aligned: (sequence, layer) cells that lost records, cut where the loss is
    cells: int = 0
    cells_cut: int = 0
    cells_unlocated: int = 0  # cut whole: the lost record could not be located
    records_cut: int = 0
    cut: list[str] = field(default_factory=list)
    holes: int = 0  # (token, layer) pairs without a record, kept as holes
    reordered: int = 0
    kept_records: int = 0
    sequences: int = 0
    tokens: dict[str, int] = field(default_factory=dict)
    layers: dict[str, int] = field(default_factory=dict)
    inferred: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    parts: int = 0
    out: str = ""
    meta: TraceMeta | None = None
    # The source's key of each sequence id, where it is not the id itself.
    seq_labels: list[str] | None = None

    def label(self, seq) -> str:
        if self.seq_labels is not None and seq is not None and 0 <= int(seq) < len(self.seq_labels):
            return self.seq_labels[int(seq)]
        return str(seq)

    def lines(self) -> list[str]:
        out = [
            f"read      {self.records} record(s) from {self.files} {self.format} file(s): "
            f"{self.read_sequences} sequence(s), {self.read_tokens} token(s)"
        ]
        dropped = []
        if self.exact_duplicates:
            dropped.append(f"{self.exact_duplicates} exact duplicate record(s)")
        if self.conflict_records_dropped:
            dropped.append(
                f"{self.conflict_records_dropped} record(s) of {self.conflicting_keys} key(s) given twice (--on-duplicate)"
            )
        if self.mismatch_records_dropped:
            dropped.append(
                f"{self.mismatch_records_dropped} record(s), {self.mismatch_tokens_dropped} token(s) and "
                f"{self.mismatch_sequences_dropped} whole sequence(s) where layers disagree (--on-mismatch)"
            )
        out.append("dropped   " + ("; ".join(dropped) if dropped else "nothing"))
        if self.mismatch_sequences:
            out.append(
                f"mismatch  {self.mismatch_sequences} sequence(s) whose layers disagree: " + "; ".join(self.mismatched)
            )
        if self.cells:
            out.append(
                f"cut       {self.cells} (sequence, layer) cell(s) that lost records: {self.records_cut} record(s) "
                f"from the first gap on, {self.cells_unlocated} cell(s) whole (gap not located); "
                "no layer is kept shifted: " + "; ".join(self.cut)
            )
        if self.holes:
            out.append(f"holes     {self.holes} (token, layer) pair(s) without a record, kept as holes (--on-missing hole)")
        tokens = ", ".join(f"{k} {v}" for k, v in self.tokens.items())
        layers = ", ".join(f"{k} {v}" for k, v in self.layers.items())
        out.append(
            f"kept      {self.kept_records} record(s): {self.sequences} sequence(s), "
            f"{sum(self.tokens.values())} token(s) ({tokens}), MoE layers with records: {layers}"
        )
        if self.reordered:
            out.append(f"reordered {self.reordered} record(s) whose experts were not best first (by probability)")
        if self.meta is not None:
            m = self.meta
            stacks = ", ".join(f"{n} {s.moe_layers} MoE layers" for n, s in m.stacks.items())
            any_stack = next(iter(m.stacks.values()))
            size = (
                f"{m.bytes_per_expert[m.dtype] / 1e6:.2f} MB per expert in {m.dtype}"
                if m.bytes_per_expert
                else "expert size unknown"
            )
            out.append(
                f"model     {m.model_id} ({m.family}): {stacks}, {any_stack.experts} experts, "
                f"top-{any_stack.top_k}, {size}"
            )
        for item in self.inferred:
            out.append(f"inferred  {item}")
        for note in self.notes:
            out.append(f"note      {note}")
        if self.out:
            out.append(f"wrote     {self.out} ({self.kept_records} rows in {self.parts} part(s))")
        return out
