"""Expert layouts and the host store that holds every expert off the device.

An :class:`ExpertSpec` says what one expert is made of (named weight tensors
and the function that applies them to tokens) and lays the tensors end to end
in one flat buffer, each starting on a 64-element boundary. One flat buffer
per expert means one copy per expert, as the simulator's cost model prices it.

The :class:`HostStore` keeps all experts of the model in one host tensor
(pinned on CUDA, so copies are true asynchronous DMA), plus the int8 / int4
group-quantised forms when a compression policy asks for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from pregate.executor import quant

ALIGN = 64  # elements; also the quantisation group, so every expert quantises whole groups


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


@dataclass
class ExpertSpec:
    """Named weights of one expert and how to compute it: ``compute(x, weights) -> y``."""

    shapes: dict[str, tuple[int, ...]]
    compute: Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]
    kind: str = ""

    def __post_init__(self):
        self.offsets: dict[str, int] = {}
        pos = 0
        for name, shape in self.shapes.items():
            self.offsets[name] = pos
            size = 1
            for s in shape:
                size *= s
            pos = _round_up(pos + size, ALIGN)
        self.numel = max(pos, ALIGN)
        self.params = sum(int(torch.Size(s).numel()) for s in self.shapes.values())

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name, shape in self.shapes.items():
            start = self.offsets[name]
            out[name] = flat[start : start + torch.Size(shape).numel()].view(shape)
        return out

    def nbytes(self, dtype: torch.dtype) -> int:
        return self.numel * dtype.itemsize


# ---- the expert functions of each family (each matches its model's own code exactly) ----

def switch_spec(d_model: int, d_ff: int, act) -> ExpertSpec:
    """Hugging Face Switch: ``wo(act(wi(x)))`` with nn.Linear weight layouts."""

    def compute(x, w):
        h = act(F.linear(x, w["wi"]))
        if h.dtype != w["wo"].dtype:
            h = h.to(w["wo"].dtype)
        return F.linear(h, w["wo"])

    return ExpertSpec({"wi": (d_ff, d_model), "wo": (d_model, d_ff)}, compute, "switch")


def gated_spec(d_model: int, d_ff: int, act) -> ExpertSpec:
    """transformers 5 stacked experts (Mixtral, Qwen-MoE, OLMoE): ``down(act(gate) * up)``."""

    def compute(x, w):
        gate, up = F.linear(x, w["gate_up_proj"]).chunk(2, dim=-1)
        return F.linear(act(gate) * up, w["down_proj"])

    return ExpertSpec({"gate_up_proj": (2 * d_ff, d_model), "down_proj": (d_model, d_ff)}, compute, "gated")


def smallmoe_spec(d_model: int, d_ff: int) -> ExpertSpec:
    """pregate's small MoE: ``gelu(x @ w_in) @ w_out``."""

    def compute(x, w):
        return F.gelu(x @ w["w_in"]) @ w["w_out"]

    return ExpertSpec({"w_in": (d_model, d_ff), "w_out": (d_ff, d_model)}, compute, "smallmoe")


class HostStore:
    """Every expert of the model in host memory, one flat row each (pinned on CUDA)."""

    def __init__(self, spec: ExpertSpec, n_objects: int, dtype: torch.dtype, pin: bool):
        self.spec = spec
        self.dtype = dtype
        self.pinned = pin
        self.full = torch.zeros((n_objects, spec.numel), dtype=dtype, pin_memory=pin)
        self.packed: dict[str, torch.Tensor] = {}
        self.templates = 0  # > 0: row i equals row i % templates (seeded random weights)

    @property
    def n_objects(self) -> int:
        return self.full.shape[0]

    def put(self, obj: int, weights: dict[str, torch.Tensor]) -> None:
        views = self.spec.views(self.full[obj])
        for name, tensor in weights.items():
            views[name].copy_(tensor.detach())

    def fill_random(self, seed: int, templates: int = 8) -> None:
        """Seeded random weights: ``templates`` distinct experts, repeated (cheap for big models)."""
        gen = torch.Generator().manual_seed(seed)
        n = self.n_objects
        distinct = min(n, templates)
        for t in range(distinct):
            row = torch.empty(self.spec.numel)
            for name, shape in self.spec.shapes.items():
                fan_in = shape[-1]
                start = self.spec.offsets[name]
                size = torch.Size(shape).numel()
                row[start : start + size].normal_(0.0, fan_in**-0.5, generator=gen)
            self.full[t].copy_(row)
        for obj in range(distinct, n):
            self.full[obj].copy_(self.full[obj % distinct])
        self.templates = distinct

    def add_form(self, form: str) -> None:
        """Build the int8 / int4 copies of every expert (once)."""
        if form in self.packed or form == "full":
            return
        nbytes = quant.packed_nbytes(self.spec.numel, form)
        packed = torch.empty((self.n_objects, nbytes), dtype=torch.uint8, pin_memory=self.pinned)
        distinct = self.templates or self.n_objects
        for obj in range(distinct):
            packed[obj].copy_(quant.quantize(self.full[obj], form))
        for obj in range(distinct, self.n_objects):
            packed[obj].copy_(packed[obj % distinct])
        self.packed[form] = packed

    def source(self, obj: int, form: str) -> torch.Tensor:
        return self.full[obj] if form == "full" else self.packed[form][obj]

    def nbytes(self, form: str) -> int:
        if form == "full":
            return self.spec.nbytes(self.dtype)
        return quant.packed_nbytes(self.spec.numel, form)
