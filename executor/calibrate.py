"""``pregate calibrate``: measure this machine into a hardware profile and a runtime profile.

Every number is measured with the executor's own code paths (its copies, its
expert function, its synthetic dense block and router), so that the
simulator, fed this profile, prices exactly what the executor does:

* host-to-device copies by size, pinned and pageable, fitted to
  ``latency + bytes / bandwidth`` (the cost model's form);
* expert FFN time by token count for each expert shape asked for
  (``[[expert_table]]``): gather, matmuls, activation, gate product, scatter-add,
  back to back, so the host's dispatch is included when it is the bound;
* peak matmul rate per dtype, device memory bandwidth, GPU time per tiny
  kernel (``gpu.kernel_launch``), host time per kernel of the dense block
  (``host.per_kernel``: the block's host time / its counted kernels,
  :data:`EXECUTOR_KERNELS`), the router's read-back (``host.router_sync``);
* host matmul rate and memory bandwidth (``cpu_compute``), dequantisation output
  rate (int8 and int4, the slower is kept);
* how much a copy on the side stream slows a concurrent matmul loop, and the
  dense block's time by token count (the profile schema has no key for these:
  they are in the file's comments and in the JSON written next to it).

``PROFILE.toml`` gets what the hardware can do (schema ``pregate.profile/2``),
``PROFILE.runtime.toml`` the executor's host costs on this machine (schema
``pregate.runtime/1``; pass it as ``--runtime``). Both record the device,
driver and library versions in their header; ``PROFILE.calibration.json``
holds every raw table.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import platform
import re
from pathlib import Path

import numpy as np
import torch

from pregate.executor.device import CLOCK_WHAT, Device, ExecutorError, clock_name, load_average, now
from pregate.executor.runtime import torch_dtype
from pregate.executor.stats import fastest_steps
from pregate.executor.store import ExpertSpec, gated_spec, switch_spec

DEFAULT_SHAPES = {"cuda": ["768x3072", "4096x14336:gated"], "cpu": ["768x3072"]}


def parse_shape(text: str) -> tuple[int, int, bool]:
    m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*(:gated)?\s*", text)
    if not m:
        raise ExecutorError(f"expert shape '{text}' is not D_MODELxD_FF or D_MODELxD_FF:gated (e.g. 768x3072)")
    return int(m.group(1)), int(m.group(2)), bool(m.group(3))


def environment(device: Device) -> dict:
    import transformers

    env = {
        "device": device.description(),
        "device_type": device.name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "host": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "clock": CLOCK_WHAT[clock_name()],
        "threads": torch.get_num_threads(),
        "load_average": load_average(),
    }
    if device.cuda:
        env["cuda"] = torch.version.cuda
        try:
            import subprocess

            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            env["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
        except (OSError, IndexError, subprocess.SubprocessError):
            env["driver"] = "unknown"
    else:
        env["driver"] = "n/a (cpu)"
    return env


class Timer:
    """Seconds per repetition of ``fn``: CUDA events on the GPU, the wall clock on the CPU."""

    def __init__(self, device: Device):
        self.device = device

    def per_call(self, fn, reps: int, warmup: int = 2, stream=None, trials: int = 3) -> float:
        """The best of ``trials`` batches of ``reps`` calls (robust to other load on the machine).

        On the CPU at least 7 batches: with cores shared, a batch is slowed by
        whatever else ran then, and the least of 3 still came out 30-60% above
        the same work inside a quieter run loop.
        """
        for _ in range(warmup):
            fn()
        if not self.device.cuda:
            trials = max(trials, 7)
        return min(self._batch(fn, reps, stream) for _ in range(trials))

    def _batch(self, fn, reps: int, stream) -> float:
        d = self.device
        d.synchronize()
        if d.cuda:
            s = stream or d.compute
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record(s)
            with torch.cuda.stream(s):
                for _ in range(reps):
                    fn()
            e1.record(s)
            e1.synchronize()
            return e0.elapsed_time(e1) / 1e3 / reps
        t = now()
        for _ in range(reps):
            fn()
        return (now() - t) / reps

    def table_per_call(self, fns: list, reps: list[int], warmup: int = 2) -> list[float]:
        """``gpu_per_call`` of each of ``fns`` (a table's token counts), on the CPU in interleaved rounds.

        On the CPU each round times one batch of every function in turn and
        each keeps its least over 7 rounds: a slow spell of the machine then
        costs one round of every token count, where 7 batches back to back
        could all fall in it and skew one row of the table (two calibrations
        ten minutes apart gave a switch-base-8 block at 1 token 2.4 and 3.2 ms).
        """
        if self.device.cuda:
            return [self.gpu_per_call(fn, r, warmup) for fn, r in zip(fns, reps)]
        for fn in fns:
            for _ in range(warmup):
                fn()
        best = [math.inf] * len(fns)
        for _ in range(7):
            for i, (fn, r) in enumerate(zip(fns, reps)):
                best[i] = min(best[i], self._batch(fn, r, None))
        return best

    def gpu_per_call(self, fn, reps: int, warmup: int = 2, trials: int = 3) -> float:
        """GPU seconds per call, the host's issue time hidden (``per_call`` on the CPU).

        Where the host issues kernels more slowly than the GPU runs them, timing
        calls back to back measures the host. Here the calls are queued behind a
        sleep kernel that lasts longer than their issue, so the events that
        bracket them see the GPU's time alone; the host's time is priced
        separately (``host.expert_issue``, ``host.block_issue``).
        """
        d = self.device
        if not d.cuda:
            return self.per_call(fn, reps, warmup, trials=trials)
        for _ in range(warmup):
            fn()
        issue = self.host_per_call(fn, reps, warmup=0, trials=1)
        cycles = int(self._cycles_per_second() * (2.0 * issue * reps + 1e-3))
        best = math.inf
        for _ in range(trials):
            d.synchronize()
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(cycles)
            e0.record()
            for _ in range(reps):
                fn()
            e1.record()
            e1.synchronize()
            best = min(best, e0.elapsed_time(e1) / 1e3 / reps)
        return best

    def _cycles_per_second(self) -> float:
        if not hasattr(self, "_cps"):
            self.device.synchronize()
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            torch.cuda._sleep(20_000_000)
            e1.record()
            e1.synchronize()
            self._cps = 20_000_000 / max(e0.elapsed_time(e1) / 1e3, 1e-6)
        return self._cps

    def host_per_call(self, fn, reps: int, warmup: int = 2, trials: int = 3) -> float:
        """Host time only (the GPU may still be busy when a batch returns); best of ``trials``."""
        for _ in range(warmup):
            fn()
        best = math.inf
        for _ in range(trials):
            self.device.synchronize()
            t = now()
            for _ in range(reps):
                fn()
            best = min(best, (now() - t) / reps)
            self.device.synchronize()
        return best


def fit_copy(sizes, seconds) -> tuple[float, float]:
    """latency, bandwidth of ``t = latency + bytes / bandwidth``, fitted in relative error."""
    s, t = np.asarray(sizes, float), np.asarray(seconds, float)
    A = np.stack([np.ones_like(s), s], axis=1) / t[:, None]
    (lat, inv_bw), *_ = np.linalg.lstsq(A, np.ones_like(t), rcond=None)
    if inv_bw <= 0:  # degenerate: fall back to the largest copy's rate
        inv_bw = t[-1] / s[-1]
    return max(float(lat), 1e-7), 1.0 / float(inv_bw)


def _spec(d: int, f: int, gated: bool) -> ExpertSpec:
    return gated_spec(d, f, torch.nn.functional.silu) if gated else switch_spec(d, f, torch.relu)


DENSE_CONTEXTS = (64, 512)  # contexts per sequence at which dense blocks are timed (the cost is a line between)


# weights from this size up are timed cold on the CPU (they outgrow a core's own 1 MiB cache here many
# times over; smaller ones stay near it in the executor's loop too)
COLD_BYTES = 4 * 2**20


def dense_block_tables(meta, device: Device, dtype: str, counts: list[int], reps: int, timer, source: str) -> list:
    """``dense_block_table`` at each of DENSE_CONTEXTS (fewer token counts at the long one)."""
    return [dense_block_table(meta, device, dtype, counts if c == DENSE_CONTEXTS[0] else [t for t in counts if t <= 64],
                              reps, timer, source, c) for c in DENSE_CONTEXTS]


def block_params(meta) -> int:
    """Weights of one dense block as the simulator counts them (dense bytes per layer / dtype size)."""
    from pregate.simulator.costs import DTYPE_BYTES

    return int(round(meta.dense_bytes_per_layer / DTYPE_BYTES.get(meta.dtype, 4)))


def dense_block_table(meta, device: Device, dtype: str, counts: list[int], reps: int, timer, source: str,
                      context: int) -> dict:
    """The executor's dense block for ``meta``'s shape, timed decoding ``T`` sequences at once.

    The simulator looks the table up by d_model, dtype and the block's weight
    count computed as its cost model does (dense bytes per layer / dtype size).
    """
    from pregate.executor.synthetic import SyntheticModel

    model = SyntheticModel(meta, device.torch, torch_dtype(dtype), max(counts), context)
    xs = {T: model.start(T) for T in counts}
    # the layers in turn: the executor runs each layer's blocks once per pass, large weights read from
    # memory on the CPU; one layer's blocks back to back stay in its caches (cf. the expert table)
    turn = [0]
    rotate = not device.cuda and block_params(meta) * 4 >= COLD_BYTES  # as the expert table: large weights only

    def block(T):
        turn[0] = (turn[0] + 1) % len(model.layers) if rotate else 0
        return model.dense(turn[0], xs[T], True, context * T)

    fns = [lambda T=T: block(T) for T in counts]
    seconds = [t / model.blocks for t in timer.table_per_call(fns, [reps] * len(counts))]
    return {
        "d_model": int(meta.d_model),
        "block_params": block_params(meta),
        "dtype": dtype,
        "context": context,
        "tokens": list(counts),
        "seconds": list(np.maximum.accumulate(seconds)),  # more tokens never cost less
        "source": f"{source}: the executor's dense block (attention over {context} tokens per sequence, "
                  f"dense FFN of {model.ffn}), per block, "
                  + ("GPU time (issued ahead of the GPU)" if device.cuda
                     else "back to back" + (", the layers in turn" if rotate else "")),
    }


def store_copies(device: Device, timer: Timer, quick: bool) -> dict:
    """Copies of expert-sized rows from random places in a store-sized host buffer.

    The fit above copies one small buffer over and over; the executor copies
    rows from a host store of every expert (gigabytes), each once in a while.
    On one GPU host, copies from a 7.2 GB store made the GPU wait 3-6x longer
    than the fit predicted while a 0.9 GB store matched it. This records the
    rate from a large store next to the small buffer's, for the calibration
    JSON (the profile keeps the small buffer's rate until the two are
    understood).
    """
    store_bytes = (2**30 if quick else 2**32) if device.cuda else 2**26
    chunk = 2**23  # 8 MiB, about one Switch-base expert in bfloat16
    rows = store_bytes // chunk
    store = torch.empty((rows, chunk), dtype=torch.uint8, pin_memory=device.cuda)
    store[:, ::4096].fill_(1)  # touch every page once
    dst = torch.empty(chunk, dtype=torch.uint8, device=device.torch)
    order = np.random.default_rng(0).permutation(rows)[: min(rows, 64)].tolist()
    position = [0]

    def one():
        dst.copy_(store[order[position[0] % len(order)]], non_blocking=device.cuda)
        position[0] += 1

    seconds = timer.per_call(one, len(order), warmup=0, stream=device.copy, trials=1)
    return {"store_bytes": int(store_bytes), "chunk_bytes": chunk, "copies": len(order),
            "seconds_per_copy": seconds, "bandwidth_Bps": chunk / seconds}


def dense_issue_in_loop(meta, device: Device, dtype: str, quick: bool) -> float:
    """Host seconds to issue one dense block of ``meta``'s shape inside the executor's run loop.

    The block's kernels (an FFN or none, the attention) set its issue time, so
    each model shape gets its own. The executor runs a calibration trace of
    that shape (its own seeded routing; two small experts per MoE layer keep
    the host store small, since dense blocks do not depend on the experts), every
    expert resident, one sequence at a time; the dense phase's host time per
    block, the least of a few runs. On the CPU, where the host computes, this
    is the block's compute inside the loop, which runs slower than alone.
    """
    import copy
    import tempfile

    from pregate.executor.run import TraceExecutor
    from pregate.simulator.settings import Settings
    from pregate.simulator.synthetic import make_trace

    small = copy.deepcopy(meta)
    small.d_ff = 64  # the experts' size does not change the dense blocks; a small store is quick to build
    small.ahead_width = None  # a recorded trace's ahead width: the synthetic one stores top-k entries
    for stack in small.stacks.values():
        stack.experts, stack.top_k = 2, min(stack.top_k, 2)
    with tempfile.TemporaryDirectory() as tmp:
        path = make_trace(Path(tmp) / "dense", seqs=2, prompt_len=4, new_tokens=4 if quick else 8, seed=1, meta=small)
        ex = TraceExecutor(path, device.name, dtype)
    runs = []
    for _ in range(3 if quick else 4):
        rt = ex.run(Settings(buffering="resident", batch_size=1, dtype=dtype))
        runs.append(rt.steps)
        rt.close()
    return decode_block_seconds(runs)


def decode_block_seconds(runs: list) -> float:
    """Seconds per dense block over the decode passes (one token each), each pass's least time over the runs.

    Why decode only: the calibration trace's prompts run as prefill passes of
    several tokens, and their blocks cost more; averaged in, one prefill pass
    of four tokens in five passes priced a switch-base-8 block 30% above what
    validate measured in the loop at batch 1, the one-token case this number
    stands for (longer ones are the dense table's).
    """
    first = runs[0]
    least = fastest_steps([[st.dense_s for st in r] for r in runs])
    passes = [i for i, st in enumerate(first) if st.decode]
    if least is None or not passes:  # runs that walked differently, or no decode pass: the least average
        return min(sum(st.dense_s for st in r) / max(1, sum(st.blocks for st in r)) for r in runs)
    return sum(least[i] for i in passes) / max(1, sum(first[i].blocks for i in passes))


def fastest_pass_totals(runs: list) -> dict:
    """Phase totals of runs of one setting, each phase summed over the passes of each pass's least time.

    ``runs``: (the runtime's StepStats, its phase_totals()) per run. A pass does
    the same work in every run of a setting, and a slow spell of a shared
    machine only adds time to the passes it overlaps; each pass's least time
    over the runs filters it where a run's total could not.
    """
    totals = runs[0][1]
    out = dict(totals)
    for key in totals:
        if key.endswith("_s"):
            least = fastest_steps([[getattr(st, key) for st in r[0]] for r in runs])
            # runs that walked differently: the least total instead
            out[key] = float(np.sum(least)) if least is not None else min(r[1][key] for r in runs)
    return out


def executor_overheads(device: Device, dtype: str, timer: Timer, quick: bool, source: str = "measured",
                       log=None) -> dict:
    """Host time the executor spends per unit of work, measured inside its own run loop.

    Timing a piece of host code alone, back to back, under-prices it: inside the
    run loop the same Python and the same kernel launches run among other work
    and take longer (on one GPU host, an expert took 88 us alone and about 150
    in the loop). So the executor runs a tiny model shape (the GPU's part is
    negligible and the host is the bound) under resident and offloaded settings
    at two batch sizes, timing each phase of every layer step, and the costs per
    unit are fitted from those totals:

    * ``block_issue``: issuing one dense block (dense phase / blocks);
    * ``router_sync``: the router's kernels and the read-back of its choice;
    * ``expert_issue`` (offloaded) and ``resident_expert_issue``: per expert,
      with a per-layer-step part (the output buffer, the residual add) that
      goes into the layer step;
    * ``layer_step`` and ``copy_issue``: the plan phase less the planner's own
      decisions (timed alone over the same stream) fitted to ``layer steps x a
      + copies x b``; ``resident_layer_step``: with every expert resident (no
      planner);
    * ``planner_costs``: the planner's own decisions per policy pair
      (:mod:`pregate.executor.planner_cost`).
    """
    import tempfile

    from pregate.executor.planner_cost import measure_planner_costs, planner_alone
    from pregate.executor.run import TraceExecutor
    from pregate.executor.shapes import make_shape_trace
    from pregate.simulator.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        path = make_shape_trace(Path(tmp) / "overheads", "tiny", seqs=16, prompt_len=8,
                                new_tokens=8 if quick else 16, dtype="float32")
        ex = TraceExecutor(path, device.name, dtype)
    base = Settings(dtype=dtype)
    runs = {
        "resident b1": base.replace(buffering="resident", batch_size=1),
        "resident b8": base.replace(buffering="resident", batch_size=8),
        "none+lru 100% b1": base.replace(cache="100%", batch_size=1),
        "none+lru 25% b8": base.replace(cache="25%", batch_size=8),
        "none+lru 50% b1": base.replace(cache="50%", batch_size=1),
        "layer_minus_1+lru 50% b8": base.replace(speculation="layer_minus_1", cache="50%", batch_size=8),
    }
    totals = {}
    repeats: dict[str, list] = {name: [] for name in runs}
    planner: dict[str, list] = {name: [] for name in runs}
    for _ in range(4 if quick else 6):
        # every setting once per round, as validate runs its points: a slow spell of the machine
        # (other work; on a VM, time the host takes from it) hits one round of each setting, and each
        # pass keeps its least time over the rounds; back to back, one spell spoiled every repeat of
        # one setting and skewed the fit (host.layer_step came out 17 and 92 us in two calibrations)
        for name, settings in runs.items():
            rt = ex.run(settings, groups=2)
            repeats[name].append((rt.steps, rt.phase_totals()))
            rt.close()
            if settings.buffering != "resident":
                # the planner's own decisions are priced per policy pair ([[planner_cost]]); what is
                # fitted here is the loop's time around them
                planner[name].append(planner_alone(ex, settings, 2, 1)["seconds"])
    for name, settings in runs.items():
        totals[name] = fastest_pass_totals(repeats[name])
        if planner[name]:
            totals[name]["planner_s"] = min(planner[name])
    planner_rows, planner_runs = measure_planner_costs(ex, base, source, quick, log=log)

    def fit(names, y, x1, x2):
        """Least squares y = a x1 + b x2 over the runs (both clamped at zero)."""
        A = np.array([[totals[n][x1], totals[n][x2]] for n in names], float)
        rhs = np.array([totals[n][y] for n in names], float)
        (a, b), *_ = np.linalg.lstsq(A, rhs, rcond=None)
        return max(float(a), 0.0), max(float(b), 0.0)

    resident = [n for n in runs if n.startswith("resident")]
    offloaded = [n for n in runs if n not in resident]
    for n in offloaded:
        totals[n]["around_planner_s"] = max(totals[n]["plan_s"] - totals[n]["planner_s"], 0.0)
    glue_r, resident_expert = fit(resident, "expert_s", "layer_steps", "experts")
    glue_o, expert = fit(offloaded, "expert_s", "layer_steps", "experts")
    plan, copy_issue = fit(offloaded, "around_planner_s", "layer_steps", "copies")
    plan_per_request = 0.0
    if not device.cuda:
        # On the CPU the loop's part of the plan phase also grows with the experts a layer step asks
        # for (the plan's lists, the slot bookkeeping) beyond the planner's own per-request time.
        # Fitted as a third term, it is priced per offloaded expert (one thread does everything in
        # order there, so where it sits in the layer step does not change the step's time).
        A = np.array([[totals[n]["layer_steps"], totals[n]["copies"], totals[n]["experts"]] for n in offloaded], float)
        rhs = np.array([totals[n]["around_planner_s"] for n in offloaded], float)
        (a3, b3, c3), *_ = np.linalg.lstsq(A, rhs, rcond=None)
        if min(a3, b3, c3) >= 0:
            plan, copy_issue, plan_per_request = float(a3), float(b3), float(c3)
    res_plan = sum(totals[n]["plan_s"] for n in resident) / sum(totals[n]["layer_steps"] for n in resident)
    return {
        "block_issue": float(np.median([t["dense_s"] / t["blocks"] for t in totals.values()])),
        "router_sync": float(np.median([totals[n]["route_s"] / totals[n]["layer_steps"] for n in resident])),
        "expert_issue": expert + plan_per_request,
        "planner_per_expert": plan_per_request,
        "resident_expert_issue": resident_expert,
        "layer_step": plan + glue_o,
        "resident_layer_step": res_plan + glue_r,
        "copy_issue": copy_issue,
        "planner_costs": planner_rows,
        "planner_alone": planner_runs,
        "runs": totals,
        "model": "synthetic tiny shape (d_model 64, 8 experts, top-2, 4 MoE layers), 2 groups per run",
    }


@dataclasses.dataclass
class Run:
    """What every measurement needs: the device, the dtype, the timer, how hard to try, and the source text."""

    device: Device
    dtype: str
    timer: "Timer"
    quick: bool
    source: str  # "measured by pregate calibrate on DEVICE, DATE": the provenance of every value
    log: object = print

    @property
    def dev(self):
        return self.device.torch

    @property
    def tdtype(self):
        return torch_dtype(self.dtype)

    @property
    def small(self) -> bool:
        return self.quick and not self.device.cuda

    @property
    def reps(self) -> int:
        return 3 if self.quick else 20


# Each measurement returns (values, details): values maps a profile key to (value, unit, what was timed),
# written with the run's source ("measured by pregate calibrate on DEVICE, DATE: what"); details go to the JSON.
Values = dict[str, tuple[float, str, str]]


def measure_copies(run: Run) -> tuple[Values, dict]:
    """Host-to-device copies by size, pinned and pageable, fitted to ``latency + bytes / bandwidth``."""
    run.log("copies: host to device by size, pinned and pageable")
    device, timer, reps = run.device, run.timer, run.reps
    values: Values = {}
    sizes = [2**18, 2**20, 2**22] if run.small else ([2**16, 2**18, 2**20, 2**22, 2**24, 2**26] if run.quick
                                                    else [2**16, 2**18, 2**20, 2**22, 2**23, 2**24, 2**26, 2**28])
    copy_table = {"bytes": sizes}
    if not device.cuda:
        # On the CPU a copy is a memcpy, and one small buffer copied over and over stays in the caches:
        # that fit said 18-22 GB/s while the executor's copies, from a store of every expert and into
        # slots of hundreds of MB, run at the rate of memory. So each copy reads the next row of a
        # store far larger than the last-level cache and writes the next row of a slot area.
        store_bytes, slots_bytes = (2**26, 2**25) if run.small else (2**28, 2**27)
        store = torch.ones(store_bytes, dtype=torch.uint8)
        slots = torch.ones(slots_bytes, dtype=torch.uint8)
        copy_table["cpu_rows_from"] = {"store_bytes": store_bytes, "slot_area_bytes": slots_bytes}
    for kind, pin in (("pinned", device.cuda), ("pageable", False)):
        times = []
        for size in sizes:
            r = max(2, min(reps, int(2**26 // size) + 2))
            if device.cuda:
                src = torch.empty(size, dtype=torch.uint8, pin_memory=pin)
                src.fill_(1)
                dst = torch.empty(size, dtype=torch.uint8, device=run.dev)
                times.append(timer.per_call(lambda: dst.copy_(src, non_blocking=pin), r, stream=device.copy))
                continue
            rows, slot_rows, position = store_bytes // size, slots_bytes // size, [0]

            def one():
                i = position[0]
                position[0] += 1
                slots[(i % slot_rows) * size:(i % slot_rows + 1) * size].copy_(
                    store[(i * 7919 % rows) * size:(i * 7919 % rows + 1) * size])

            times.append(timer.per_call(one, r))
        copy_table[f"{kind}_seconds"] = times
        lat, bw = fit_copy(sizes, times)
        copy_table[f"{kind}_fit"] = {"latency_s": lat, "bandwidth_Bps": bw}
        what = ("host copies (the CPU device) of rows of a store larger than the caches into rows of a slot "
                "area" if not device.cuda else f"{kind} host-to-device copies")
        values[f"pcie.{kind}_bandwidth"] = (bw, "B/s", f"{what} of {sizes[0]}-{sizes[-1]} B, "
                                                       "fitted to latency + bytes/bandwidth")
        if kind == "pinned":
            values["pcie.copy_latency"] = (lat, "s", "fixed cost per copy from the same fit (pinned)")
    return values, {"copies": copy_table, "copies_from_a_large_store": store_copies(device, timer, run.quick)}


def measure_device_rates(run: Run) -> tuple[Values, dict]:
    """Peak matmul rate per dtype, device memory bandwidth, device memory."""
    run.log("matmul rate per dtype, memory bandwidth")
    device, dev, timer, reps = run.device, run.dev, run.timer, run.reps
    values: Values = {}
    n = 256 if run.small else (2048 if run.quick else 8192) if device.cuda else (512 if run.quick else 1024)
    for name, key in (("float32", "gpu.fp32_flops"), ("bfloat16", "gpu.bf16_flops"), ("float16", "gpu.fp16_flops")):
        a = torch.randn(n, n, device=dev).to(torch_dtype(name))
        b = torch.randn(n, n, device=dev).to(torch_dtype(name))
        t = timer.per_call(lambda: a @ b, max(2, reps // 2))
        values[key] = (2 * n**3 / t, "FLOP/s", f"{name} matmul {n}x{n}x{n}")
    size = 2**24 if run.small else (2**27 if run.quick else 2**29) if device.cuda else (2**26 if run.quick else 2**28)
    a = torch.empty(size, dtype=torch.uint8, device=dev)
    b = torch.empty_like(a)
    t = timer.per_call(lambda: b.copy_(a), max(2, reps // 2))
    values["gpu.hbm_bandwidth"] = (2 * size / t, "B/s", f"device-to-device copy of {size} B (read + write)")
    values["gpu.memory"] = (float(device.memory_bytes()), "B", "total memory of the device")
    return values, {}


def measure_kernel_launch(run: Run) -> tuple[Values, dict]:
    """GPU time per tiny kernel queued back to back (on the CPU: time per tiny operation)."""
    run.log("kernel launch, host dispatch per kernel, router read-back")
    tiny = torch.zeros(16, device=run.dev)
    if run.device.cuda:
        k = 500
        torch.cuda.synchronize()
        torch.cuda._sleep(50_000_000)  # back up the queue so the kernels run back to back
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(k):
            tiny.add_(1.0)
        e1.record()
        e1.synchronize()
        launch = e0.elapsed_time(e1) / 1e3 / k
        launch_what = "GPU time per tiny kernel queued back to back"
    else:
        launch = run.timer.per_call(lambda: tiny.add_(1.0), 200)
        launch_what = "time per tiny operation (no GPU: host and device are the same)"
    return {"gpu.kernel_launch": (max(launch, 1e-8), "s", launch_what)}, {}


def measure_dense_and_router(run: Run, shape: str, traces: list | None) -> tuple[Values, dict]:
    """Host dispatch per kernel and the router's read-back on the executor's synthetic block; the dense
    block's time by token count (and one table per trace's model shape, with its issue in the run loop)."""
    from pregate.executor.synthetic import SyntheticModel
    from pregate.executor.shapes import shape_meta

    device, dtype, timer, quick, reps, source = run.device, run.dtype, run.timer, run.quick, run.reps, run.source
    values: Values = {}
    d0, f0, _ = parse_shape(shape)
    meta = shape_meta("tiny")
    meta.d_model, meta.d_ff = d0, f0
    meta.dense_bytes_per_layer = 4 * d0 * d0 * 4 + 2 * d0 * (4 * d0) * 4  # attention + a 4x FFN, float32 bytes
    meta.dtype = "float32"
    meta.extra = {"blocks": 1}
    for s in meta.stacks.values():
        s.block_indices = []
    model = SyntheticModel(meta, run.dev, run.tdtype, 256, 256)
    x1 = model.start(1)
    blocks = model.blocks
    host_block = timer.host_per_call(lambda: model.dense(0, x1, True, 64), 20 if quick else 100)
    block_kernels = EXECUTOR_KERNELS["dense_block"][0] + EXECUTOR_KERNELS["dense_ffn"][0]  # it has a 4x FFN
    dispatch = host_block / (blocks * block_kernels)
    values["host.dispatch_per_kernel"] = (dispatch, "s", f"host time to issue the executor's dense block "
                                          f"(d_model {d0}, 1 token, timed alone) / its {block_kernels} kernels")
    route_total = timer.per_call(lambda: model.route(0, x1), 20 if quick else 100)
    values["host.router_sync"] = (max(route_total - 3 * dispatch, 1e-7), "s",
                                  "router (matmul, softmax, top-k) with its read-back to the host, minus 3 dispatches")
    dense_counts = [1, 4, 16, 64] if quick else [1, 2, 4, 8, 16, 32, 64, 128, 256]
    dense_tables = dense_block_tables(meta, device, dtype, dense_counts, reps, timer, source)
    timed = {(t["d_model"], t["block_params"]) for t in dense_tables}
    for trace_meta in traces or []:
        key = (int(trace_meta.d_model), block_params(trace_meta))
        if key in timed:  # two traces of one model shape (say, 8 and 64 experts) share a dense block
            continue
        timed.add(key)
        run.log(f"dense block of {trace_meta.model_id} (d_model {trace_meta.d_model}) by token count, and its issue "
                "inside the run loop")
        tables = dense_block_tables(trace_meta, device, dtype, dense_counts, reps, timer, source)
        issue = dense_issue_in_loop(trace_meta, device, dtype, quick)
        for table in tables:
            table["issue_seconds"] = issue
        dense_tables += tables
    dense_table = {"d_model": d0, "blocks": blocks, "host_seconds_1_token": host_block}
    for T in ([1, 16] if run.small else [1, 16, 128]):
        x = model.start(T)
        dense_table[f"decode_{T}_tokens_ctx64_s"] = timer.per_call(lambda: model.dense(0, x, True, 64 * T), reps)
    xp = model.start(min(128, model.x0.shape[0]))
    dense_table["prefill_128_tokens_s"] = timer.per_call(lambda: model.dense(0, xp, False, 0), reps)
    return values, {"dense_tables": dense_tables, "dense_block": dense_table}


def measure_executor_host(run: Run) -> tuple[Values, dict]:
    """The executor's own host time per layer step, copy and expert (fitted over runs of a tiny model)."""
    run.log("executor host time: per layer step, per copy, per expert")
    overheads = executor_overheads(run.device, run.dtype, run.timer, run.quick, run.source, run.log)
    values: Values = {}
    for key, what in (("block_issue", "issuing one dense block"),
                      ("router_sync", "the router's kernels and the read-back of its choice"),
                      ("layer_step", "the loop's part of a layer step around the planner's own decisions (the "
                                     "slot bookkeeping, the output buffer and residual add; the planner itself is "
                                     "priced per policy pair in [[planner_cost]])"),
                      ("resident_layer_step", "the same with every expert resident (no planner)"),
                      ("copy_issue", "issuing one expert copy on the side stream, with its cache bookkeeping"),
                      ("expert_issue", "issuing one expert: gather, expert function, scatter-add, slot events; on the CPU plus the loop's plan-phase time per requested expert beyond the planner's own, fitted as a third term"),
                      ("resident_expert_issue", "the same with every expert resident (no slot events)")):
        values[f"host.{key}"] = (max(overheads[key], 1e-8), "s",
                                 f"{what}: host time inside the executor's run loop, fitted over runs of a tiny "
                                 "model shape")
    return values, {"executor_overheads": overheads, "planner_costs": overheads["planner_costs"]}


def measure_host_cpu(run: Run, shape: str) -> tuple[Values, dict]:
    """The present host's rates for experts computed on the CPU (the ``[cpu]`` section, what ``--host
    PROFILE.toml`` reads): streaming read bandwidth, matmul FLOP/s at an expert's shape (fp32 and bf16),
    the threads they ran on, and the host's time to run one tiny expert (its dispatch)."""
    run.log("host: streaming read bandwidth, matmul rate at an expert shape, threads")
    quick, reps = run.quick, run.reps
    host_timer = Timer(Device("cpu"))
    threads = torch.get_num_threads()
    # a streaming read: a sum over a buffer far larger than the caches reads every byte once
    hs = 2**24 if quick else 2**28
    buf = torch.ones(hs // 4, dtype=torch.float32)
    t = host_timer.per_call(lambda: buf.sum(), max(2, reps // 2))
    values: Values = {"cpu.memory_bandwidth": (hs / t, "B/s", f"streaming read: sum of a {hs} B float32 buffer, "
                                                              f"{threads} threads")}
    d, f, gated = parse_shape(shape)
    tokens = 64 if quick else 256
    d, f = (min(d, 1024), min(f, 4096)) if quick else (d, f)
    rates = {}
    for name, key in (("float32", "cpu.flops"), ("bfloat16", "cpu.bf16_flops")):
        x = torch.randn(tokens, d).to(torch_dtype(name))
        w = torch.randn(d, f).to(torch_dtype(name))
        t = host_timer.per_call(lambda: x @ w, 3)
        rates[name] = 2 * tokens * d * f / t
        values[key] = (rates[name], "FLOP/s", f"{name} matmul at an expert shape ({tokens} tokens x {d} x {f}), "
                                              f"{threads} threads")
    values["cpu.threads"] = (float(threads), "count", "torch.get_num_threads() during these measurements")
    spec = _spec(64, 128, gated)
    slot = torch.randn(spec.numel) * 0.02
    weights = spec.views(slot)
    x1 = torch.randn(1, 64)
    t = host_timer.per_call(lambda: spec.compute(x1, weights), 50 if quick else 500)
    values["cpu.dispatch"] = (max(t, 1e-8), "s", "one expert of 64x128 at one token on the host: its operations' "
                                                 "fixed cost")
    return values, {"host_cpu": {"threads": threads, "matmul_flops": rates, "read_bytes": hs}}


def measure_dequant(run: Run, shape: str) -> tuple[Values, dict]:
    """Dequantisation output rate (int8, int4; the slower is kept)."""
    run.log("dequantisation rate (int8, int4)")
    from pregate.executor import quant

    d0, f0, g0 = parse_shape(shape)
    numel = 2**18 if run.small else (2**20 if run.quick else _spec(d0, f0, g0).numel)
    flat = torch.randn(numel)
    out = torch.empty(numel, dtype=run.tdtype, device=run.dev)
    deq = {}
    for form in quant.FORMS:
        buf = quant.quantize(flat, form).to(run.dev)
        t = run.timer.per_call(lambda: quant.dequantize_into(buf, out, form), run.reps)
        deq[form] = numel * run.tdtype.itemsize / t
    values = {"dequant.bandwidth": (min(deq.values()), "B/s", f"dequantised {run.dtype} bytes written per second "
                                    f"({numel} weights; slower of int8 {deq['int8']:.3g} and int4 {deq['int4']:.3g} B/s)")}
    return values, {"dequant_Bps": deq}


def measure_overlap(run: Run) -> tuple[Values, dict]:
    """How much a copy on the side stream slows a concurrent matmul loop (no profile key: the JSON only)."""
    if not run.device.cuda:
        return {}, {"copy_compute_overlap": {"note": "not measured on the cpu: copies are synchronous"}}
    run.log("copy on the side stream during compute")
    dev, device = run.dev, run.device
    m = 4096
    a = torch.randn(m, m, device=dev, dtype=run.tdtype)
    src = torch.empty(2**26, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(2**26, dtype=torch.uint8, device=dev)
    loop = 20

    def compute():
        for _ in range(loop):
            a @ a

    alone = run.timer.per_call(compute, 3)
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    with torch.cuda.stream(device.copy):
        for _ in range(4):
            dst.copy_(src, non_blocking=True)
    compute()
    e1.record()
    torch.cuda.synchronize()
    together = e0.elapsed_time(e1) / 1e3
    return {}, {"copy_compute_overlap": {"matmul_loop_alone_s": alone, "with_256MB_of_copies_s": together,
                                         "slowdown": together / alone}}


def measure_expert_table(run: Run, text: str) -> dict:
    """The executor's expert function (gather to scatter-add) by token count for one shape: an expert table."""
    dev, dtype, tdtype, reps = run.dev, run.dtype, run.tdtype, run.reps
    d, f, gated = parse_shape(text)
    spec = _spec(d, f, gated)
    run.log(f"expert FFN {d}x{f}{' gated' if gated else ''} ({dtype}) by token count")
    counts = [1, 4, 16, 64] if run.quick else [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    # on the CPU an expert that outgrows a core's own caches is read from memory in the executor (the
    # next one is another expert); timed back to back it stays in the shared cache, so such calls go
    # in turn over copies that together pass it (about 64 MiB; at most 8). Smaller experts are timed
    # back to back: with them the sample trace matched the loop (+-12%) and copies in turn priced
    # it 20% high
    n_copies = 1 if run.device.cuda or spec.numel * 4 < COLD_BYTES else min(8, math.ceil(64 * 2**20 / (spec.numel * 4)))
    weights = [spec.views(torch.randn(spec.numel, device=dev).to(tdtype) * 0.02) for _ in range(n_copies)]
    turn = [0]
    x = torch.randn(max(counts), d, device=dev).to(tdtype)
    idx = torch.arange(max(counts), device=dev)
    gate = torch.full((max(counts), 1), 0.5, device=dev, dtype=tdtype)
    outb = torch.zeros_like(x)

    def call(c):
        i = idx[:c]

        def one():
            turn[0] = (turn[0] + 1) % n_copies
            y = spec.compute(x.index_select(0, i), weights[turn[0]])
            outb.index_add_(0, i, y * gate[:c])

        return one

    secs = run.timer.table_per_call([call(c) for c in counts], [reps if c <= 64 else max(3, reps // 4) for c in counts])
    secs = list(np.maximum.accumulate(secs))  # more tokens never cost less
    return {"d_model": d, "d_ff": f, "dtype": dtype, "tokens": counts, "seconds": secs,
            "source": f"{run.source}: the executor's expert function ({'gated' if gated else 'two matmuls'}), "
                      "gather to scatter-add, "
                      + ("GPU time (issued ahead of the GPU)" if run.device.cuda
                         else f"back to back, in turn over {n_copies} copies of the weights")}


def calibrate(device_name: str, quick: bool = False, shapes: list[str] | None = None, dtype: str = "",
              log=print, traces: list | None = None) -> tuple[str, dict]:
    """Measure the device; returns the profile's TOML text and the details for the JSON.

    Each measurement is its own function returning its keys with provenance;
    ``traces`` (trace metadata) add a dense-block table for each trace's model shape.
    """
    device = Device(device_name)
    dtype = dtype or ("bfloat16" if device.cuda else "float32")
    env = environment(device)
    source = (f"measured by pregate calibrate on {env['device']}, {env['date']} ({env['threads']} torch thread(s), "
              f"timed on {env['clock']})")
    run = Run(device, dtype, Timer(device), quick, source, log)
    shapes = shapes or DEFAULT_SHAPES[device.name]
    details: dict = {"environment": env, "quick": quick, "dtype": dtype}
    values: Values = {}
    for measured, more in (measure_copies(run), measure_device_rates(run), measure_kernel_launch(run),
                           measure_dense_and_router(run, shapes[0], traces), measure_executor_host(run),
                           measure_host_cpu(run, shapes[-1]), measure_dequant(run, shapes[0]), measure_overlap(run)):
        values.update(measured)
        details.update(more)
    tables = [measure_expert_table(run, text) for text in shapes]
    details["expert_tables"] = tables
    env["load_average_end"] = load_average()
    details["values"] = {k: {"value": v, "unit": u, "source": f"{source}: {what}"} for k, (v, u, what) in values.items()}
    return render_profile(env, values, source, tables, details), details


def _num(v: float) -> str:
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.6g}"


def _str(s: str) -> str:
    return json.dumps(s)  # a TOML basic string


def render_profile(env: dict, values: dict, source: str, tables: list[dict], details: dict) -> str:
    name = "calibrated-" + re.sub(r"[^a-z0-9]+", "-", env["device"].lower()).strip("-")
    description = (f"measured on {env['device']} ({env['date']}); driver {env.get('driver')}, "
                   f"torch {env['torch']}, transformers {env['transformers']}")
    lines = [
        "# Hardware profile, schema pregate.profile/1 (see simulator/README.md).",
        f"# Written by pregate calibrate on {env['device']}, {env['date']}"
        + (f" (load average {env['load_average']} at the start, {env.get('load_average_end')} at the end)."
           if env.get("load_average") is not None else "."),
        f"# driver {env.get('driver')}, CUDA {env.get('cuda', 'n/a')}, torch {env['torch']}, "
        f"transformers {env['transformers']}, python {env['python']}, {env['host']}",
        'schema = "pregate.profile/1"',
        f"name = {_str(name)}",
        f"description = {_str(description)}",
    ]
    if env["device_type"] == "cuda":
        lines.append(f"cuda_names = [{_str(env['device'])}]")
    sections: dict[str, list[str]] = {}
    for key, (value, unit, what) in values.items():
        section, field = key.split(".")
        sections.setdefault(section, []).append(
            f"{field} = {{ value = {_num(value)}, unit = {_str(unit)}, source = {_str(f'{source}: {what}')} }}")
    sections.setdefault("pcie", []).append(
        'copy_engines = { value = 1, unit = "count", source = "the executor issues every copy on one side stream" }')
    for section in ("gpu", "host", "pcie", "cpu", "dequant"):
        lines += ["", f"[{section}]"] + sections.get(section, [])
    overlap = details.get("copy_compute_overlap", {})
    lines += ["", "# Not in the schema (see PROFILE.calibration.json):"]
    if "slowdown" in overlap:
        lines.append(f"# copy/compute overlap: a matmul loop takes {overlap['slowdown']:.3f}x as long with copies "
                     "running on the side stream")
    else:
        lines.append(f"# copy/compute overlap: {overlap.get('note', 'n/a')}")
    for key, value in details.get("dense_block", {}).items():
        lines.append(f"# dense block {key} = {value:.6g}" if isinstance(value, float) else f"# dense block {key} = {value}")
    for table in details.get("dense_tables", []):
        lines += [
            "",
            "[[dense_table]]",
            f"d_model = {table['d_model']}",
            f"block_params = {table['block_params']}",
            f"dtype = {_str(table['dtype'])}",
            f"context = {table['context']}",
            f"tokens = [{', '.join(str(t) for t in table['tokens'])}]",
            f"seconds = [{', '.join(_num(s) for s in table['seconds'])}]",
        ]
        if table.get("issue_seconds"):
            lines.append(f"issue_seconds = {_num(table['issue_seconds'])}")
        lines.append(f"source = {_str(table['source'])}")
    for table in tables:
        lines += [
            "",
            "[[expert_table]]",
            f"d_model = {table['d_model']}",
            f"d_ff = {table['d_ff']}",
            f"dtype = {_str(table['dtype'])}",
            f"tokens = [{', '.join(str(t) for t in table['tokens'])}]",
            f"seconds = [{', '.join(_num(s) for s in table['seconds'])}]",
            f"source = {_str(table['source'])}",
        ]
    return "\n".join(lines) + "\n"


# Kernels (torch operations; views excluded) the executor's code launches: SyntheticModel.dense and the
# expert path of OffloadRuntime. tests/test_runtime_profiles.py counts them again under a dispatch mode.
EXECUTOR_KERNELS = {
    "dense_block": (14, "RMS norm (5: pow, mean, add, rsqrt, mul), QKV matmul, attention, output matmul, "
                        "residual add, RMS norm (5)"),
    "dense_ffn": (9, "RMS norm (5), two matmuls, activation, residual add"),
    "expert": (6, "gather, two matmuls, activation, gate product, scatter-add"),
    "gated_expert": (7, "gather, gate-up matmul, SiLU, product, down matmul, gate product, scatter-add (the split "
                        "is a view)"),
}


def runtime_path(path: str | Path) -> Path:
    """Where the runtime profile of a calibrated hardware profile goes: ``X.toml`` -> ``X.runtime.toml``."""
    path = Path(path)
    return path.with_name(path.name[:-len(".toml")] + ".runtime.toml")


def split_profile(text: str, where: str, kernels=None, planner_costs=()) -> tuple[str, str]:
    """A schema /1 profile's text as a hardware profile (schema /2) and a runtime profile, both as TOML.

    ``kernels``: the executor's counted kernels (a fresh calibration); without
    them the runtime keeps the old cost model's counts, so a converted file
    prices exactly as before. ``planner_costs``: the rows of a fresh
    calibration's planner timed alone (dicts of :class:`PlannerCost`'s fields).
    """
    import tomllib

    from pregate.simulator.profile import parse_profile, render_profile
    from pregate.simulator.runtime import PlannerCost, render_runtime, runtime_from_legacy

    profile = parse_profile(tomllib.loads(text), where)
    head = [line[2:] for line in text.splitlines() if line.startswith("# ") and "schema" not in line
            and not line.startswith("# Not in the schema")][:3]
    runtime = runtime_from_legacy(profile, kernels, name=f"{profile.name}-executor")
    # on the cpu device one thread computes and issues: its host costs add to the tables' compute
    serial = bool(kernels) and "cuda_names" not in tomllib.loads(text)
    runtime = dataclasses.replace(runtime, description=f"pregate's executor as calibrated with {profile.name}",
                                  host_is_device=serial,
                                  planner_costs=tuple(PlannerCost(**row) for row in planner_costs))
    return (render_profile(profile, "\n".join(head)),
            render_runtime(runtime, "\n".join(head + ["Host costs of pregate's executor on the calibrated machine; "
                                                        "load with --runtime this file."])))


def write_profile(path: str | Path, text: str, details: dict) -> tuple[Path, Path]:
    """Write PROFILE.toml (hardware), PROFILE.runtime.toml (the executor's host costs) and the JSON details."""
    from pregate.simulator.profile import load_profile
    from pregate.simulator.runtime import load_runtime

    path = Path(path)
    if path.suffix != ".toml":
        raise ExecutorError(f"profile file must end in .toml: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    hardware, runtime = split_profile(text, str(path), EXECUTOR_KERNELS, details.get("planner_costs", ()))
    path.write_text(hardware)
    runtime_path(path).write_text(runtime)
    side = path.with_suffix(".calibration.json")
    side.write_text(json.dumps(details, indent=2, default=float) + "\n")
    load_runtime(runtime_path(path), load_profile(path))  # the simulator must accept what we wrote
    return path, side


def convert_profile(old: str | Path, out: str | Path) -> tuple[Path, Path]:
    """``pregate calibrate --convert OLD.toml -o NEW.toml``: a schema /1 file as the two new files."""
    old, out = Path(old), Path(out)
    if not old.is_file():
        raise ExecutorError(f"profile file not found: {old}")
    if out.suffix != ".toml":
        raise ExecutorError(f"profile file must end in .toml: {out}")
    hardware, runtime = split_profile(old.read_text(), str(old))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(hardware)
    runtime_path(out).write_text(runtime)
    return out, runtime_path(out)
