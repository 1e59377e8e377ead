"""Finding and loading a model: a known shape with random weights, a local folder, or the local HF cache.

Nothing is ever downloaded: loading runs with ``local_files_only=True``, and a
missing checkpoint is one clear error that suggests ``--random-init``. Remote
code stays off unless the user asks for it, and weights come from safetensors
files when the checkpoint has them (otherwise transformers' weights-only load).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pregate.traces.errors import PregateError
from pregate.tracer.adapters import KnownVariant, ModelAdapter, adapter_for_model_type, all_adapters

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    adapter: ModelAdapter
    tokenizer: Any | None  # a transformers tokenizer, or None (fallback byte tokenisation)
    model_id: str
    random_init: bool


def known_variants() -> list[tuple[type[ModelAdapter], KnownVariant]]:
    return [(cls, v) for cls in all_adapters().values() for v in cls.variants]


def find_variant(name: str) -> tuple[type[ModelAdapter], KnownVariant] | None:
    key = name.lower()
    for cls, variant in known_variants():
        if key == variant.name.lower() or key in (a.lower() for a in variant.aliases):
            return cls, variant
    return None


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise PregateError(f"unknown dtype '{name}' (choose from {', '.join(DTYPES)})")
    return DTYPES[name]


def build_random(
    name_or_path: str, *, seed: int = 0, dtype: str = "float32", overrides: dict[str, Any] | None = None
) -> LoadedModel:
    """A model with the exact architecture of a known variant (or a local config.json), seeded random weights."""
    found = find_variant(name_or_path)
    if found is not None:
        cls, variant = found
        config = cls.build_config({**variant.config, **(overrides or {})})
        model_id = variant.name
    else:
        path = Path(name_or_path)
        if not (path / "config.json").is_file():
            names = ", ".join(v.name for _, v in known_variants())
            raise PregateError(
                f"--random-init needs a known model name or a folder with a config.json; "
                f"'{name_or_path}' is neither (known: {names})"
            )
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        for key, value in (overrides or {}).items():
            setattr(config, key, value)
        cls = adapter_for_model_type(config.model_type)
        model_id = str(path)
    model = cls.build_random(config, seed=seed, dtype=_dtype(dtype))
    return LoadedModel(model, cls(model), None, model_id, True)


def load_pretrained(name_or_path: str, *, dtype: str = "float32", trust_remote_code: bool = False) -> LoadedModel:
    """Load a checkpoint from a local folder or the local Hugging Face cache, never the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pregate.tracer.smallmoe import is_small_moe_folder, load_small_moe

    if is_small_moe_folder(name_or_path):
        model, tokenizer = load_small_moe(name_or_path)
        model = model.to(_dtype(dtype))
        cls = adapter_for_model_type(model.config.model_type)
        return LoadedModel(model, cls(model), tokenizer, str(name_or_path), False)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name_or_path, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        if "trust_remote_code" in str(exc):
            raise PregateError(
                f"'{name_or_path}' needs code from the checkpoint to load; pregate only runs it with --trust-remote-code"
            ) from None
        hint = " or pass --random-init to trace random weights of the same shape" if find_variant(name_or_path) else ""
        raise PregateError(
            f"no local copy of '{name_or_path}': not a folder with config.json and not in the Hugging Face cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}); copy the checkpoint here{hint}"
        ) from None
    cls = adapter_for_model_type(config.model_type)
    kwargs = dict(local_files_only=True, trust_remote_code=trust_remote_code, dtype=_dtype(dtype))
    try:
        model = cls.model_class().from_pretrained(name_or_path, use_safetensors=True, **kwargs)
    except OSError:
        # No safetensors file: transformers falls back to torch.load(weights_only=True).
        try:
            model = cls.model_class().from_pretrained(name_or_path, **kwargs)
        except OSError:
            raise PregateError(
                f"'{name_or_path}' has a config but no weights here; copy the weight files, "
                "or pass --random-init to trace random weights of the same shape"
            ) from None
    tokenizer = None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
    except Exception:  # a checkpoint without tokenizer files falls back to byte ids
        tokenizer = None
    return LoadedModel(model.eval(), cls(model), tokenizer, name_or_path, False)


def load_model(
    name_or_path: str,
    *,
    random_init: bool = False,
    seed: int = 0,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    tokenizer: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> LoadedModel:
    loaded = (
        build_random(name_or_path, seed=seed, dtype=dtype, overrides=overrides)
        if random_init
        else load_pretrained(name_or_path, dtype=dtype, trust_remote_code=trust_remote_code)
    )
    if tokenizer:
        from transformers import AutoTokenizer

        try:
            loaded.tokenizer = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
        except Exception as exc:
            raise PregateError(f"cannot load tokenizer '{tokenizer}' from local files: {exc}") from None
    return loaded
