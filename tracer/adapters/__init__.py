"""Model adapters: one file per MoE family, each registered with ``@register``.

Importing this package imports every family file so that the registry is full.
"""

from pregate.tracer.adapters import (  # noqa: F401  (registration)
    deepseek,
    gpt_oss,
    mixtral,
    olmoe,
    pregate_moe,
    qwen_moe,
    switch,
)
from pregate.tracer.adapters.base import (
    KnownVariant,
    ModelAdapter,
    RouterSite,
    Routing,
    adapter_for_model_type,
    all_adapters,
    register,
)

__all__ = [
    "KnownVariant",
    "ModelAdapter",
    "RouterSite",
    "Routing",
    "adapter_for_model_type",
    "all_adapters",
    "register",
]
