"""What a training run of the small MoE is told (kept free of torch so the CLI loads fast)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TrainSettings:
    preset: str = "tiny"
    out: Path = Path("runs/pregate-moe-tiny")
    corpus: list[str] = field(default_factory=list)  # empty: the default corpus
    steps: int = 1200
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.01
    seed: int = 0
    eval_every: int = 100
    eval_windows: int = 64
    checkpoint_every: int = 100
    device: str = "cpu"
    resume: bool = False
    progress: bool = True
