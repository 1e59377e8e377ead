"""The device the executor runs on: CUDA with a side stream and events, or the CPU.

On CUDA, expert copies run on a side *copy stream* while the model runs on the
*compute stream*; events order the two (see executor/README.md, "Slots,
streams and events"). On the CPU the same code runs with every stream and
event operation a no-op: copies are plain host copies that complete before
the call returns, so nothing can overlap and nothing needs ordering.
"""

from __future__ import annotations

import contextlib
import os
import time

import torch

from pregate.traces.errors import PregateError

DEVICES = ("cpu", "cuda")


class ExecutorError(PregateError):
    """Bad executor input (device, model, settings), explained in one line."""


def check_device(name: str) -> str:
    """The device name, refused in one line if unknown or absent."""
    if name not in DEVICES:
        raise ExecutorError(f"unknown device '{name}' (valid: {', '.join(DEVICES)})")
    if name == "cuda" and not torch.cuda.is_available():
        raise ExecutorError("--device cuda: no CUDA device is visible on this machine (use --device cpu)")
    return name


class Device:
    """Streams, events and timing for one device; every operation is a no-op on the CPU."""

    def __init__(self, name: str):
        self.name = check_device(name)
        self.cuda = self.name == "cuda"
        self.torch = torch.device("cuda", torch.cuda.current_device()) if self.cuda else torch.device("cpu")
        self.compute = torch.cuda.current_stream() if self.cuda else None
        self.copy = torch.cuda.Stream() if self.cuda else None

    # ---- events ---------------------------------------------------------------
    def event(self, timing: bool = False):
        return torch.cuda.Event(enable_timing=timing) if self.cuda else None

    def record_compute(self, event) -> None:
        if event is not None:
            event.record(self.compute)

    def record_copy(self, event) -> None:
        if event is not None:
            event.record(self.copy)

    def compute_waits(self, event) -> None:
        if event is not None:
            self.compute.wait_event(event)

    def copy_waits(self, event) -> None:
        if event is not None:
            self.copy.wait_event(event)

    @staticmethod
    def done(event) -> bool:
        return event is None or event.query()

    # ---- streams ----------------------------------------------------------------
    def on_copy_stream(self):
        return torch.cuda.stream(self.copy) if self.cuda else contextlib.nullcontext()

    def sync_compute(self) -> None:
        if self.cuda:
            self.compute.synchronize()

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    # ---- description --------------------------------------------------------------
    def description(self) -> str:
        if self.cuda:
            return torch.cuda.get_device_name(self.torch)
        import platform

        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"

    def memory_bytes(self) -> int:
        if self.cuda:
            return int(torch.cuda.get_device_properties(self.torch).total_memory)
        import os

        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


# What the executor's timings read. On CUDA the wall clock (the GPU runs beside the host). On the CPU
# device, with one torch thread, the host thread does all the work (compute, copies, planning) and
# waits for nothing, so its CPU time is the step's time on an idle core; the wall clock adds the time
# other processes held the core (on a shared 2-core machine, 34 s wall for 8.4 s of CPU in one run).
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
CLOCK_WHAT = {"wall": "the wall clock (time.perf_counter)", "cpu": "the host thread's CPU time (time.thread_time)"}
_clock = {"name": "wall", "fn": time.perf_counter}


def now() -> float:
    """Seconds on the executor's clock (see :func:`step_clock`)."""
    return _clock["fn"]()


def clock_name() -> str:
    """The clock timings are read on now: 'wall' or 'cpu'."""
    return _clock["name"]


def default_clock(device: str) -> str:
    """The thread's CPU time on the CPU device (repeatable on shared cores), the wall clock on CUDA."""
    return "cpu" if device == "cpu" else "wall"


@contextlib.contextmanager
def step_clock(device: str, clock: str | None):
    """Read every executor timing on ``clock`` ('wall' or 'cpu', default :func:`default_clock`) inside.

    The CPU clock is only meaningful where one thread does all the work: it is
    refused on CUDA (the host's CPU time would leave out the GPU's).
    """
    clock = clock or default_clock(device)
    if clock not in CLOCKS:
        raise ExecutorError(f"unknown clock '{clock}' (valid: {', '.join(CLOCKS)})")
    if clock == "cpu" and device != "cpu":
        raise ExecutorError("--clock cpu times the host thread alone; on cuda use --clock wall (the default)")
    before = dict(_clock)
    _clock.update(name=clock, fn=CLOCKS[clock])
    try:
        yield
    finally:
        _clock.update(before)


def load_average() -> float | None:
    """The machine's one-minute load average (None where the system has none).

    Why it is recorded: the CPU clock leaves out the time a thread waits for a
    core, but not the time it runs slower because other work shares the
    caches and memory; on the 2-core machine one other busy process made
    switch-base-8 batch-4 steps 10-35% slower on that clock. A calibration and
    a validation compare only at similar loads.
    """
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


@contextlib.contextmanager
def cpu_threads(device: str, threads: int | None):
    """On the CPU, run with ``threads`` torch threads (default 1) and restore the count afterwards.

    One thread keeps CPU measurements stable when other processes share the
    cores: a parallel region whose threads are descheduled can take 100x longer.
    """
    if device != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads or 1))
    try:
        yield
    finally:
        torch.set_num_threads(before)
