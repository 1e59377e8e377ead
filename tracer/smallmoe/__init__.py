"""pregate's own small MoE model: the model, its tokenizer and corpus, and its trainer."""

from pregate.tracer.smallmoe.model import PRESETS, SmallMoEConfig, SmallMoEModel, is_small_moe_folder, load_small_moe

__all__ = ["PRESETS", "SmallMoEConfig", "SmallMoEModel", "is_small_moe_folder", "load_small_moe"]
