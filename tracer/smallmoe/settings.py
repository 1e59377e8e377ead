"""What a training run of the small MoE is told (kept free of torch so the CLI loads fast)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

# Training defaults a preset brings with it, over TrainSettings' own. Why per preset: the
# Mixtral-topology model runs 32 layers a step, so the tiny preset's 1200 steps of 16 x 128
# tokens would take hours on two shared CPU cores; its defaults (one torch thread, 200 steps of
# 8 x 128 tokens) train it in minutes. Measured on a loaded 2-core machine, two torch threads
# were now and then 10x slower a step than one (threads spin-waiting for a busy core).
PRESET_TRAINING: dict[str, dict] = {
    "mixtral-topo": {"steps": 200, "batch_size": 8, "threads": 1},
}


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
    threads: int = 0  # torch CPU threads; 0: torch's default (OMP_NUM_THREADS or one per core)
    resume: bool = False
    progress: bool = True


def preset_settings(preset: str, **given) -> TrainSettings:
    """TrainSettings for ``preset``: its own defaults, then whatever the caller gave (None: not given)."""
    base = replace(TrainSettings(preset=preset), **PRESET_TRAINING.get(preset, {}))
    return replace(base, **{k: v for k, v in given.items() if v is not None})
