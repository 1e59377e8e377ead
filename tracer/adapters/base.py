"""What the tracer needs to know about a family of MoE models, behind one interface.

An adapter answers four questions about a loaded model: where its routers are
(one :class:`RouterSite` per MoE layer), how to read a router's output as
chosen experts / probabilities / capacity drops, how to apply a router to an
arbitrary hidden state (for the ``ahead`` pre-gating signal), and what the
model costs in bytes (for the trace metadata). It also builds the known
variants of the family with seeded random weights.

A new family is one new file in this folder that subclasses
:class:`ModelAdapter` and registers itself with :func:`register`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from pregate.traces.errors import PregateError
from pregate.traces.schema import bytes_per_dtype

_ADAPTERS: dict[str, type["ModelAdapter"]] = {}


def register(cls: type["ModelAdapter"]) -> type["ModelAdapter"]:
    """Class decorator: make an adapter known by its ``family`` and ``model_types``."""
    _ADAPTERS[cls.family] = cls
    return cls


def all_adapters() -> dict[str, type["ModelAdapter"]]:
    return dict(_ADAPTERS)


def adapter_for_model_type(model_type: str) -> type["ModelAdapter"]:
    for cls in _ADAPTERS.values():
        if model_type in cls.model_types:
            return cls
    known = sorted(t for c in _ADAPTERS.values() for t in c.model_types)
    raise PregateError(
        f"model type '{model_type}' is not a supported MoE family (supported: {', '.join(known)})"
    )


@dataclass
class RouterSite:
    """One MoE layer: its router module and where it sits."""

    stack: str  # "encoder" or "decoder"
    layer: int  # MoE layer index within the stack (0..n_moe-1)
    block: int  # transformer block index within the stack
    router: nn.Module


@dataclass
class Routing:
    """A router's decision for N tokens (rows in the order the model flattened them)."""

    experts: torch.Tensor  # (N, k) long, best first
    probs: torch.Tensor  # (N, k) float: the gate weights the model uses
    dropped: torch.Tensor  # (N,) bool: token skipped by expert capacity


@dataclass
class KnownVariant:
    """A published model shape that ``--random-init`` can build without its weights."""

    name: str
    config: dict[str, Any]
    params: float | None = None  # published total parameter count, for checking the shape
    aliases: tuple[str, ...] = ()


class ModelAdapter:
    """Base class of model-family adapters (see the module docstring)."""

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    variants: ClassVar[tuple[KnownVariant, ...]] = ()
    encoder_decoder: ClassVar[bool] = False

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config

    # ---- building -----------------------------------------------------------
    @classmethod
    def config_class(cls):
        raise NotImplementedError

    @classmethod
    def model_class(cls):
        raise NotImplementedError

    @classmethod
    def build_config(cls, overrides: dict[str, Any]):
        """A config of this family from keyword overrides (used for variants and tests)."""
        return cls.config_class()(**overrides)

    @classmethod
    def build_random(cls, config, seed: int, dtype: torch.dtype = torch.float32) -> nn.Module:
        """The architecture of ``config`` with weights drawn from a seeded generator."""
        torch.manual_seed(seed)
        model = cls.model_class()(config)
        return model.to(dtype).eval()

    @classmethod
    def summarize(cls, config) -> dict[str, Any]:
        """The shape of ``config`` without building the model (``pregate models`` lists
        shapes of tens of billions of parameters): experts, top_k, moe_layers (text, e.g.
        "6+6" for two stacks), d_model, d_ff and expert_params of one routed expert."""
        raise NotImplementedError

    # ---- routing --------------------------------------------------------------
    def sites(self) -> list[RouterSite]:
        raise NotImplementedError

    def read_output(self, site: RouterSite, output: Any, hidden: torch.Tensor) -> Routing:
        """Interpret what ``site.router`` returned when called by the model on ``hidden``."""
        raise NotImplementedError

    def router_logits(self, site: RouterSite, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (N, experts) of ``site``'s router applied to ``hidden`` (N, d_model).

        Calls the router module itself, so the result is exactly what that
        layer's router computes, whatever the library version does inside.
        """
        raise NotImplementedError

    def predict(self, site: RouterSite, hidden: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``width`` experts ``site``'s router ranks highest for ``hidden``, with their
        softmax probabilities, best first: the ``ahead`` pre-gating signal. The first
        top-k of them are the experts that router would choose."""
        probs = torch.softmax(self.router_logits(site, hidden).float(), dim=-1)
        top, ids = torch.topk(probs, width, dim=-1)
        return ids, top

    # ---- sizes ------------------------------------------------------------------
    def expert_shape(self) -> dict[str, Any]:
        """d_model, d_ff, activation, gating, and parameters of one routed expert."""
        raise NotImplementedError

    def top_k(self) -> int:
        raise NotImplementedError

    def num_experts(self) -> int:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The model part of the trace metadata."""
        sites = self.sites()
        stacks: dict[str, dict[str, Any]] = {}
        for site in sites:
            entry = stacks.setdefault(
                site.stack,
                {"moe_layers": 0, "experts": self.num_experts(), "top_k": self.top_k(), "block_indices": []},
            )
            entry["moe_layers"] += 1
            entry["block_indices"].append(site.block)
        shape = self.expert_shape()
        expert_params = shape["expert_params"]
        total = sum(p.numel() for p in self.model.parameters())
        n_experts_total = sum(s["moe_layers"] * s["experts"] for s in stacks.values())
        embedding = sum(m.weight.numel() for m in self.model.modules() if isinstance(m, nn.Embedding))
        n_blocks = self.num_blocks()
        dense = (total - expert_params * n_experts_total - embedding) // max(1, n_blocks)
        param_dtype = next(self.model.parameters()).dtype
        dtype_name = str(param_dtype).removeprefix("torch.")
        return {
            "family": self.family,
            "stacks": stacks,
            "d_model": shape["d_model"],
            "d_ff": shape["d_ff"],
            "activation": shape["activation"],
            "gating": shape["gating"],
            "expert_params": expert_params,
            "bytes_per_expert": bytes_per_dtype(expert_params),
            "dense_bytes_per_layer": int(dense * param_dtype.itemsize),
            "dtype": dtype_name,
            "capacity": self.capacity(),
            "extra": {
                "total_params": total,
                "embedding_bytes": int(embedding * param_dtype.itemsize),
                "blocks": n_blocks,
                "model_type": getattr(self.config, "model_type", ""),
            },
        }

    def num_blocks(self) -> int:
        raise NotImplementedError

    def capacity(self) -> dict[str, Any]:
        return {"kind": "none"}
