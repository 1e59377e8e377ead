"""Capturing routing during generation with forward hooks on the routers.

Hooking each router module works on every transformers version (output
fields and flags such as ``output_router_logits`` moved between versions).
The hook itself only keeps references to tensors the model already made (the
router's input and its decision), so tracing adds almost nothing to a
forward pass; the ``ahead`` predictions are computed afterwards, one batched
router call per (layer, distance), by :meth:`RoutingRecorder.ahead`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pregate.tracer.adapters import ModelAdapter, RouterSite


@dataclass
class RouterCall:
    """One forward of one MoE layer: router input (N, d) and its decision."""

    hidden: torch.Tensor
    experts: torch.Tensor
    probs: torch.Tensor
    dropped: torch.Tensor


class RoutingRecorder:
    """Keeps every router call of a generation, per (stack, MoE layer), in call order."""

    def __init__(self, adapter: ModelAdapter):
        self.adapter = adapter
        self.sites: list[RouterSite] = adapter.sites()
        if not self.sites:
            raise ValueError("the model has no MoE routers")
        self.calls: dict[tuple[str, int], list[RouterCall]] = {}
        self._handles = []
        self._paused = False

    def __enter__(self) -> "RoutingRecorder":
        for site in self.sites:
            self._handles.append(site.router.register_forward_hook(self._hook(site)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, site: RouterSite):
        key = (site.stack, site.layer)
        read = self.adapter.read_output

        def hook(module, args, output):
            if self._paused:
                return
            hidden = args[0]
            routing = read(site, output, hidden)
            self.calls.setdefault(key, []).append(
                RouterCall(hidden.detach().reshape(-1, hidden.shape[-1]), routing.experts, routing.probs, routing.dropped)
            )

        return hook

    def reset(self) -> None:
        self.calls = {}

    def paused(self):
        """A context in which router calls are not recorded (predictions made with the routers)."""
        from contextlib import contextmanager

        @contextmanager
        def pause():
            before, self._paused = self._paused, True
            try:
                yield
            finally:
                self._paused = before

        return pause()

    def layers(self, stack: str) -> int:
        return sum(1 for s in self.sites if s.stack == stack)

    def stacks(self) -> list[str]:
        return sorted({s.stack for s in self.sites})

    @torch.no_grad()
    def ahead(self, stack: str, layer: int, distance: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """What MoE layer ``layer + j`` (j = 1..distance) ranks highest from layer ``layer``'s router inputs.

        Returns experts (N, J, width) and probs (N, J, width) over all calls of the
        layer concatenated; J = min(distance, layers - 1 - layer) and may be 0.
        """
        hidden = torch.cat([c.hidden for c in self.calls[(stack, layer)]])
        later = [s for s in self.sites if s.stack == stack and layer < s.layer <= layer + distance]
        if not later:
            empty = hidden.new_zeros((hidden.shape[0], 0, width))
            return empty.long(), empty.float()
        self._paused = True
        try:
            predicted = [self.adapter.predict(site, hidden, width) for site in later]
        finally:
            self._paused = False
        return torch.stack([ids for ids, _ in predicted], 1), torch.stack([p for _, p in predicted], 1)
