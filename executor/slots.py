"""Preallocated expert slots on the device, filled by copies on the side stream.

The rules that keep a weight from being overwritten while a kernel may still
read it (on CUDA, the host runs ahead of the GPU, so "the Python code is done
with it" proves nothing):

* every slot has a **ready** event, recorded on the copy stream after the copy
  (and dequantisation) that filled it; the compute stream waits on it before
  the first kernel that reads the slot;
* every slot has a **used** event, recorded on the compute stream after the
  last kernel that read it; the copy stream waits on it before it overwrites
  the slot (a new expert, or NaN poison in tests).

A copy that is still queued when its expert is evicted is not cancelled (DMA
cannot be recalled); the next copy into the slot is ordered after it on the
same stream. Misses that find every slot protected go through *bypass*
buffers (the simulator's staging buffer), allocated on first need and reused
under the same two events.
"""

from __future__ import annotations

import torch

from pregate.executor import quant
from pregate.executor.device import Device, now
from pregate.executor.store import HostStore


class SlotPool:
    def __init__(self, device: Device, store: HostStore, n_slots: int, dtype: torch.dtype, poison: bool = False):
        self.device = device
        self.store = store
        self.dtype = dtype
        self.n_slots = n_slots
        self.numel = store.spec.numel
        # On the host, zeros touch every page now: with empty() a slot's first copy in the timed run
        # also paid the page faults (on the CPU a 50% cache ran slower than a 25% one over short runs).
        alloc = torch.empty if device.cuda else torch.zeros
        self.data = alloc((max(n_slots, 1), self.numel), dtype=dtype, device=device.torch)
        self.buffers: list[torch.Tensor] = [self.data[i] for i in range(n_slots)]
        self.free: list[int] = list(range(n_slots - 1, -1, -1))  # pop() hands out slot 0 first
        self.slot_of: dict[int, int] = {}
        self.ready = [device.event() for _ in range(n_slots)]
        self.used = [device.event() for _ in range(n_slots)]
        self.ready_set = [False] * n_slots
        self.used_set = [False] * n_slots
        self.bypass: list[int] = []  # indices into buffers of bypass buffers
        self.bypass_next = 0
        self.staging: dict[str, torch.Tensor] = {}  # device buffers for compressed copies
        self.poison = poison
        self.bytes_moved = 0
        self.copies = 0
        self.copy_seconds = 0.0  # host time spent in copy calls (the whole copy on the CPU)

    def close(self) -> None:
        """Drop the device buffers (the counters stay)."""
        self.data = None
        self.buffers = []
        self.staging = {}

    # ---- slot bookkeeping ---------------------------------------------------------
    def assign(self, obj: int) -> int:
        slot = self.free.pop()
        self.slot_of[obj] = slot
        return slot

    def release(self, obj: int) -> None:
        """The cache evicted ``obj``: its slot is free once its last reader is done."""
        slot = self.slot_of.pop(obj)
        if self.poison and self.buffers[slot].is_floating_point():
            with self.device.on_copy_stream():
                if self.used_set[slot]:
                    self.device.copy_waits(self.used[slot])
                self.buffers[slot].fill_(float("nan"))
                self._mark_ready(slot)
        self.free.append(slot)

    def begin_layer(self) -> None:
        self.bypass_next = 0

    def take_bypass(self) -> int:
        """A buffer for a miss that is not cached (used this layer step only)."""
        if self.bypass_next == len(self.bypass):
            self.buffers.append(torch.empty(self.numel, dtype=self.dtype, device=self.device.torch))
            self.ready.append(self.device.event())
            self.used.append(self.device.event())
            self.ready_set.append(False)
            self.used_set.append(False)
            self.bypass.append(len(self.buffers) - 1)
        slot = self.bypass[self.bypass_next]
        self.bypass_next += 1
        return slot

    # ---- copies ---------------------------------------------------------------------
    def _mark_ready(self, slot: int) -> None:
        self.device.record_copy(self.ready[slot])
        self.ready_set[slot] = True

    def load_many(self, loads: list[tuple[int, int, str]]) -> None:
        """Copy expert ``obj`` into ``slot`` on the copy stream (``form``: full, int8 or int4) for
        each ``(obj, slot, form)`` in order, entering the copy stream once (a stream switch costs
        the host as much as issuing a copy)."""
        if not loads:
            return
        device = self.device
        start = now()
        with device.on_copy_stream():
            for obj, slot, form in loads:
                src = self.store.source(obj, form)
                if self.used_set[slot]:
                    device.copy_waits(self.used[slot])
                if form == "full":
                    self.buffers[slot].copy_(src, non_blocking=device.cuda)
                else:
                    buf = self.staging.get(form)
                    if buf is None:
                        buf = torch.empty(src.numel(), dtype=torch.uint8, device=device.torch)
                        self.staging[form] = buf
                    # One staging buffer per form: the next copy into it is queued behind
                    # this dequantisation on the same stream.
                    buf.copy_(src, non_blocking=device.cuda)
                    quant.dequantize_into(buf, self.buffers[slot], form)
                self._mark_ready(slot)
                self.bytes_moved += src.numel() * src.element_size()
                self.copies += 1
        self.copy_seconds += now() - start

    def load_pinned(self, objs) -> None:
        """Pinned experts (a static placement, or every expert for resident) into their own slots,
        once, before the first layer step; warm-up, so the counters start from zero after it, and
        nothing needs events (a pinned slot is never overwritten)."""
        if not objs:
            return
        self.load_many([(obj, self.assign(obj), "full") for obj in objs])
        self.device.synchronize()
        self.ready_set = [False] * len(self.ready_set)
        self.bytes_moved = 0
        self.copies = 0
        self.copy_seconds = 0.0

    # ---- use by the compute stream -----------------------------------------------------
    def landed(self, slot: int) -> bool:
        if not self.ready_set[slot]:
            return True
        if self.device.done(self.ready[slot]):
            # the copy is complete: the compute stream needs no wait for it (and no later query)
            self.ready_set[slot] = False
            return True
        return False

    def acquire(self, slot: int, stall_events: list | None = None) -> torch.Tensor:
        """The slot's weights, with the compute stream ordered after the copy that filled it."""
        device = self.device
        if self.ready_set[slot]:
            if device.cuda and stall_events is not None and not self.ready[slot].query():
                before, after = device.event(timing=True), device.event(timing=True)
                device.record_compute(before)
                device.compute_waits(self.ready[slot])
                device.record_compute(after)
                stall_events.append((before, after))
            else:
                device.compute_waits(self.ready[slot])
            self.ready_set[slot] = False  # later compute work is ordered after the copy already
        return self.buffers[slot]

    def release_use(self, slot: int) -> None:
        """Called after the last kernel reading ``slot`` was queued in this layer step."""
        self.device.record_compute(self.used[slot])
        self.used_set[slot] = True
