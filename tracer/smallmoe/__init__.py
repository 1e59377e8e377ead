"""pregate's own small MoE model: the model, its tokenizer and corpus, and its trainer.

Names are loaded on first use, so that the command line can read the training
settings without importing torch.
"""

from importlib import import_module

_EXPORTS = {
    "PRESETS": "model",
    "SmallMoEConfig": "model",
    "SmallMoEModel": "model",
    "is_small_moe_folder": "model",
    "load_small_moe": "model",
    "TrainSettings": "settings",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
