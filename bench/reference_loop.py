"""A minimal offloaded decode loop in plain torch, apart from pregate's executor, and the simulator's prediction of it.

Why: a cost model validated only against the executor it was calibrated on
may describe that executor and nothing else. This loop is written from
scratch (it imports nothing of pregate.executor): per MoE layer, dense blocks
of two matmuls, a router whose choice is read back to the host (then replaced
by the trace's routing, so both sides see the same requests), experts kept in
a host store, a device slot cache with on-demand LRU (the experts of the
current layer protected; a miss with no free slot goes through a staging
buffer) and an oracle prefetch of the next layer step's experts. On the CPU
the "device" is the host, copies are host copies and block.

Its runtime profile is measured the way ``pregate calibrate`` measures the
executor's: kernel counts of its functions; the expert and dense-block times
by token count (tables), timed the way the loop calls them (an expert on a
different expert's weights each call, a block after the experts of the layer
step before) in the same rounds as the points; the loop's own host time per
phase inside its run loop, over runs of a tiny synthetic shape (never the
points it then predicts), fitted per unit (block, layer step, expert, copy) by
least squares. The simulator is then given the hardware profile (copies,
memory rates), these tables and this runtime profile, and predicts each point
with no fitting.

    python bench/reference_loop.py TRACE... --profile cpu.toml [--batch-size 1,16] [--cache 25%,50%] \\
        [--rounds 2] [-o OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

# The loop's clock: the thread's CPU time. With one torch thread this thread does all the work and
# waits for nothing, so its CPU time is the step's time on an idle core; on the shared 2-core machine
# the wall clock measured other processes (the fit below once gave 308 us per tiny expert on the wall
# clock, 24 us on this one). pregate calibrate and validate read the same clock on the CPU device.
clock = time.thread_time

PHASE_S = ("dense_s", "route_s", "plan_s", "expert_s")  # the loop's phases, timed per layer step
COUNTS = ("layer_steps", "experts", "copies", "blocks")  # the work each phase's time is for
KERNELS = {"dense_block": 4, "dense_ffn": 0, "expert": 6, "gated_expert": 6}  # counted below (count_kernels)


class Loop:
    """The model's weights and the slot cache for one trace's shapes."""

    def __init__(self, meta, layout, capacity: int, blocks: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        d, f = meta.d_model, meta.d_ff
        dense_params = meta.dense_bytes_per_layer / {"float32": 4, "bfloat16": 2, "float16": 2}.get(meta.dtype, 4)
        hidden = max(1, int(dense_params // (2 * d)))  # a block holds the trace's dense weights in two matmuls
        self.d, self.hidden, self.blocks = d, hidden, blocks
        n_layers = layout.n_layers
        self.dense = [[(torch.randn(hidden, d, generator=g) * d ** -0.5, torch.randn(d, hidden, generator=g) * hidden ** -0.5)
                       for _ in range(blocks)] for _ in range(n_layers)]
        self.router = [torch.randn(int(layout.experts[i]), d, generator=g) for i in range(n_layers)]
        self.numel = 2 * d * f
        self.store = torch.randn(layout.n_objects, self.numel, generator=g) * d ** -0.5  # the host store
        self.capacity = capacity
        # the slots and the staging buffer written once here, outside the timed run, as a device pool is
        # allocated before a run: else a slot's first copy in the run paid the page faults of fresh memory
        # (a 50% cache of 18.9 MB experts ran slower than a 25% one, with fewer misses)
        self.slots = torch.empty(max(1, capacity), self.numel).zero_()
        self.staging = torch.empty(self.numel).zero_()
        self.where: OrderedDict[int, int] = OrderedDict()  # obj -> slot, least recently used first
        self.free = list(range(capacity))
        self.hits = self.misses = self.prefetches = self.bypasses = 0

    # ---- compute
    def run_dense(self, layer: int, x):
        for w1, w2 in self.dense[layer]:
            x = x + torch.relu(x @ w1.T) @ w2.T
        return x

    def route(self, layer: int, x):
        return torch.topk(torch.softmax(x @ self.router[layer].T, -1), 1, -1).indices.tolist()

    def expert(self, flat, x, tokens: int, out, idx):
        d = self.d
        w1 = flat[: self.numel // 2].view(-1, d)
        w2 = flat[self.numel // 2:].view(d, -1)
        i = idx[:tokens]
        out.index_add_(0, i, torch.relu(x.index_select(0, i) @ w1.T) @ w2.T * 0.5)

    # ---- the cache: on-demand LRU, current layer protected, oracle prefetch
    def _room(self, protected) -> int | None:
        if self.free:
            return self.free.pop()
        for obj in self.where:
            if obj not in protected:
                return self.where.pop(obj)
        return None

    def fetch(self, obj: int, protected, prefetch: bool) -> torch.Tensor | None:
        if obj in self.where:
            if not prefetch:
                self.where.move_to_end(obj)
                self.hits += 1
            return self.slots[self.where[obj]]
        slot = self._room(protected)
        if slot is None:
            if prefetch:
                return None
            self.bypasses += 1
            self.misses += 1
            self.staging.copy_(self.store[obj])
            return self.staging
        self.slots[slot].copy_(self.store[obj])
        self.where[obj] = slot
        if prefetch:
            self.prefetches += 1
        else:
            self.misses += 1
        return self.slots[slot]


def run(loop: Loop, stream, prefetch: bool) -> dict:
    """Walk the stream; per pass its wall time, and the host time per phase."""
    ls_start, req_start = stream.pass_ls_start, stream.ls_req_start
    req_obj, req_tok = stream.req_obj.tolist(), stream.req_tokens.tolist()
    idx = torch.arange(int(stream.ls_tokens.max()) + 1)
    phases = dict(dense_s=0.0, route_s=0.0, plan_s=0.0, expert_s=0.0, layer_steps=0, experts=0, copies=0, blocks=0)
    step_s = []
    pass_phases = []  # per pass: its host time in each phase of PHASE_S
    pass_counts = []  # per pass: its layer steps, experts and copies
    resident = loop.capacity >= stream.layout.n_objects
    if resident:
        for obj in range(stream.layout.n_objects):
            loop.fetch(obj, (), True)
        loop.prefetches = 0
    for p in range(stream.n_passes):
        a, b = int(ls_start[p]), int(ls_start[p + 1])
        t_pass = clock()
        x = torch.randn(int(stream.ls_tokens[a]), loop.d)
        before = [phases[k] for k in PHASE_S]
        counts0 = [phases[k] for k in COUNTS]
        for ls in range(a, b):
            layer = int(stream.ls_layer[ls])
            t0 = clock()
            x = loop.run_dense(layer, x)
            t1 = clock()
            loop.route(layer, x)
            t2 = clock()
            lo, hi = int(req_start[ls]), int(req_start[ls + 1])
            objs = req_obj[lo:hi]
            protected = set(objs)
            copies0 = loop.misses + loop.prefetches
            weights = [loop.fetch(o, protected, False) for o in objs]
            if prefetch and not resident and ls + 1 < b:  # oracle: the next layer step's experts
                for o in req_obj[int(req_start[ls + 1]):int(req_start[ls + 2])]:
                    loop.fetch(o, protected, True)
                    protected.add(o)  # named for the next step: no later prefetch of this round evicts it
            t3 = clock()
            out = torch.zeros_like(x)
            for w, tok in zip(weights, req_tok[lo:hi]):
                loop.expert(w, x, tok, out, idx)
            x = x + out
            t4 = clock()
            phases["dense_s"] += t1 - t0
            phases["route_s"] += t2 - t1
            phases["plan_s"] += t3 - t2
            phases["expert_s"] += t4 - t3
            phases["layer_steps"] += 1
            phases["experts"] += hi - lo
            phases["blocks"] += loop.blocks
            phases["copies"] += loop.misses + loop.prefetches - copies0
        pass_phases.append([phases[k] - v for k, v in zip(PHASE_S, before)])
        pass_counts.append([phases[k] - v for k, v in zip(COUNTS, counts0)])
        if stream.pass_decode[p]:
            step_s.append(clock() - t_pass)
    phases["step_s"] = step_s
    phases["pass_phases"] = pass_phases
    phases["pass_counts"] = pass_counts
    phases["counts"] = {"hits": loop.hits, "misses": loop.misses, "prefetches": loop.prefetches}
    return phases


def per_call(fn, reps: int, between=None) -> float:
    """The least of 7 batches' mean time per call (as pregate calibrate times on the CPU).

    ``fn(i)`` is the i-th call; ``between(i)``, if given, runs untimed before it: the loop's other
    work between two calls of this function (each call then timed alone, the batch's times summed).
    """
    if between is not None:
        between(0)
    fn(0)
    best, i = float("inf"), 0
    for _ in range(7):
        total = 0.0
        if between is None:
            t = clock()
            for i in range(i + 1, i + 1 + reps):
                fn(i)
            total = clock() - t
        else:
            for i in range(i + 1, i + 1 + reps):
                between(i)
                t = clock()
                fn(i)
                total += clock() - t
        best = min(best, total / reps)
    return best


def count_kernels(loop: Loop) -> dict:
    """Torch operations the loop's functions dispatch (views excluded)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    views = {"view", "t", "slice", "alias", "as_strided", "expand", "transpose", "detach", "_unsafe_view"}

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += func.__name__.split(".")[0] not in views
            return func(*args, **(kwargs or {}))

    x, out, idx = torch.randn(2, loop.d), torch.zeros(2, loop.d), torch.arange(2)
    with Count():
        loop.run_dense(0, x)
    dense = Count.n // loop.blocks
    Count.n = 0
    with Count():
        loop.expert(loop.store[0], x, 2, out, idx)
    return {"dense_block": dense, "dense_ffn": 0, "expert": Count.n, "gated_expert": Count.n}


TABLE_COUNTS = [1, 2, 4, 8, 16, 32, 64]  # token counts of the tables the simulator is given
LONG_CONTEXT = 4096  # the dense table's second context (the loop's block reads no context: the same times)


def distinct_experts(tokens: int, top_k: int, experts: int) -> int:
    """Experts ``tokens`` tokens choose in one layer step, each ``top_k`` of ``experts`` uniformly:
    the expected number of distinct ones, ``E (1 - (1 - k/E)^n)``, rounded (at least one)."""
    return max(1, round(experts * (1.0 - (1.0 - min(top_k, experts) / experts) ** tokens)))


def time_tables(loop: Loop, counts: list[int], top_k: int = 1) -> dict:
    """One round of the loop's expert and dense-block times by token count, timed the way the loop
    calls its functions.

    An expert is timed on a different expert's weights each call, in turn over the host store, as
    the loop's hits read them: the weights were last touched a layer step ago or more, not just
    before (timing one expert back to back kept its weights in the CPU's cache). A dense block is
    timed on each layer in turn, after the experts its tokens ran in the layer step before
    (untimed; as many as n tokens choose with uniform routing): the loop runs a block after them,
    and they push the block's weights out of the cache.
    """
    n_obj, experts, layers = loop.store.shape[0], loop.router[0].shape[0], len(loop.dense)
    idx = torch.arange(max(counts))
    xs = {n: torch.randn(n, loop.d) for n in counts}
    out = torch.zeros(max(counts), loop.d)
    turn = iter(range(1 << 62))  # the store's experts in turn, across every timing below

    def expert_call(n):
        return lambda i: loop.expert(loop.store[next(turn) % n_obj], xs[n], n, out, idx)

    def layer_experts(n):  # the experts n tokens chose in the layer step before a block (one token each)
        k = distinct_experts(n, top_k, experts)
        return lambda i: [loop.expert(loop.store[next(turn) % n_obj], xs[n], 1, out, idx) for _ in range(k)]

    def dense(n):
        return per_call(lambda i: loop.run_dense(i % layers, xs[n]), 10, layer_experts(n)) / loop.blocks

    return {"expert": [per_call(expert_call(n), 20) for n in counts], "dense": [dense(n) for n in counts]}


def tables(rounds: list[dict], meta, counts: list[int], where: str):
    """The hardware profile's expert table and dense tables from rounds of :func:`time_tables`: each token
    count's least time over the rounds (as each step keeps its fastest), made non-decreasing.

    The loop's block has no attention, so its time does not depend on the context: the dense table
    is given at two contexts with the same times (the simulator then draws a flat line through them;
    with one context it would add a roofline attention over the longer contexts, which the loop
    does not run).
    """
    from pregate.simulator.profile import DenseTable, ExpertTable

    def table(kind):
        return tuple(np.maximum.accumulate(np.min([r[kind] for r in rounds], axis=0)).tolist())

    params = int(meta.dense_bytes_per_layer / {"float32": 4, "bfloat16": 2, "float16": 2}.get(meta.dtype, 4))
    src = (f"measured by bench/reference_loop.py on {where}: the loop's function as the loop calls it "
           f"(experts in turn over the host store; a block after its tokens' experts), {len(rounds)} rounds")
    return (ExpertTable(meta.d_model, meta.d_ff, "float32", tuple(counts), table("expert"), src),
            DenseTable(meta.d_model, params, "float32", 64, tuple(counts), table("dense"), src),
            DenseTable(meta.d_model, params, "float32", LONG_CONTEXT, tuple(counts), table("dense"),
                       src + "; the block reads no context: the same times at any context"))


def top_k_of(meta) -> int:
    return max((s.top_k for s in meta.stacks.values()), default=1) if meta.stacks else 1


def blocks_of(meta, layout) -> int:
    blocks = int(meta.extra.get("blocks", 0) or 0) if isinstance(meta.extra, dict) else 0
    if meta.stacks and all(s.block_indices for s in meta.stacks.values()):
        blocks = sum(max(s.block_indices) + 1 for s in meta.stacks.values())
    return max(1, round(blocks / layout.n_layers)) if blocks else 1


FIT_COUNTS = [1, 2, 4, 8, 16, 32]  # token counts of the fit's tables
FIT_REPEATS = 5  # runs of each fit setting; each pass and each table keeps its least time over them
FIT_BATCHES = (1, 2, 4)  # batch sizes of the fit's runs: 1, 2 and 4 experts per layer step at most


def FIT_SETTINGS(n: int):  # noqa: N802 (a table of settings): (slots, prefetch) of the fit's runs
    return ((n, False), (n // 4, False), (n // 4, True), (n // 2, False), (n // 2, True))


def nonnegative_lstsq(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0, exactly, by trying each subset of the columns
    (a handful here): a cost per unit is never negative, and clamping an unconstrained fit's
    negative terms to 0 would leave the others fitted to a model that is then not the one used."""
    best, best_x = float("inf"), np.zeros(A.shape[1])
    for mask in range(1, 1 << A.shape[1]):
        cols = [j for j in range(A.shape[1]) if mask >> j & 1]
        x, *_ = np.linalg.lstsq(A[:, cols], y, rcond=None)
        if np.all(x >= 0):
            full = np.zeros(A.shape[1])
            full[cols] = x
            res = float(np.sum((A @ full - y) ** 2))
            if res < best:
                best, best_x = res, full
    return best_x


def fit_host(runs: dict) -> dict:
    """The loop's host time per unit, from its phases' excess over the tables, over the fit's runs.

    Dense blocks: the dense phase's excess per block. The router: the route phase per layer step.
    The expert phase's excess over the tables is fitted as a cost per layer step (the output buffer
    and its sum) and per expert; the plan phase beyond its copies as a cost per layer step
    (offloaded, and with every expert resident), per expert (its slot lookup) and per copy. Both by
    non-negative least squares over the runs, each run's phase per layer step (so that every run
    weighs the same): batch 1, 2 and 4 give the runs different experts per layer step, and the
    cache sizes different copies per expert, so the fit can tell them apart (a median of the
    excess per expert put the layer step's own work on its experts: too little at batch 1, too
    much at batch 4).
    """
    runs = list(runs.values())
    tot = lambda k: np.array([r[k] for r in runs], float)  # noqa: E731
    ls = tot("layer_steps")
    per_block = float(np.median((tot("dense_s") - tot("table_dense_s")) / tot("blocks")))
    route = float(np.median(tot("route_s") / ls))
    full = np.array([r["resident"] for r in runs], float)  # every expert resident
    ones, experts, copies = np.ones(len(runs)), tot("experts") / ls, tot("copies") / ls
    e_step, e_expert = nonnegative_lstsq(np.stack([ones, experts], 1), (tot("expert_s") - tot("table_expert_s")) / ls)
    p_step, p_res_step, p_expert, copy_issue = nonnegative_lstsq(
        np.stack([1 - full, full, experts, copies], 1), (tot("plan_s") - tot("copies") * tot("copy_s")) / ls)
    return {"per_block": per_block, "per_expert": e_expert + p_expert, "per_resident_expert": e_expert + p_expert,
            "router_sync": route, "layer_step": e_step + p_step, "resident_layer_step": e_step + p_res_step,
            "copy_issue": copy_issue}


def measure_runtime(where: str, base_runtime):
    """The loop's host costs, fitted from its phases over runs of a tiny synthetic shape (not the points predicted)."""
    from pregate.simulator.provenance import Value
    from pregate.simulator.stream import build_stream
    from pregate.simulator.synthetic import make_trace
    from pregate.traces import open_trace

    tmp = tempfile.TemporaryDirectory()  # the trace is read lazily: the folder lives until the fit is done
    trace = open_trace(make_trace(Path(tmp.name) / "tiny", seqs=8, prompt_len=4, new_tokens=8, layers=4, seed=5))
    # a tiny expert and block (64 wide): their compute is small, so the phases' excess over the
    # tables is the loop's host time (Python, the allocator, the cache), as calibrate fits it
    small = dataclasses.replace(trace.meta, d_model=64, d_ff=128, expert_params=2 * 64 * 128,
                                dense_bytes_per_layer=2 * 64 * 256 * 4, dtype="float32")
    runs = {}
    top_k = top_k_of(trace.meta)
    for batch in FIT_BATCHES:
        stream = build_stream(trace, batch_size=batch)
        n = stream.layout.n_objects
        for cap, pre in FIT_SETTINGS(n):
            repeats, timed = [], []
            for _ in range(FIT_REPEATS):
                loop = Loop(small, stream.layout, cap, blocks_of(trace.meta, stream.layout))
                repeats.append(run(loop, stream, pre))
                timed.append(time_tables(loop, FIT_COUNTS, top_k))  # the tables in the same rounds
                # a copy as the loop makes one: from the store's experts in turn into the slots in turn
                timed[-1]["copy"] = per_call(lambda i: loop.slots[i % loop.slots.shape[0]].copy_(loop.store[i % n]), 50)
            # each pass's least time in each phase over the runs (a pass does the same work in every
            # run; a slow spell of the machine only adds time to the passes it overlaps)
            least = np.min([x["pass_phases"] for x in repeats], axis=0).sum(axis=0)
            r = repeats[-1]
            best = r | {k: float(v) for k, v in zip(PHASE_S, least)}
            exp_t, den_t, _ = tables(timed, small, FIT_COUNTS, where)
            r["table_expert_s"] = float(sum(np.interp(t, exp_t.tokens, exp_t.seconds) for t in stream.req_tokens))
            r["table_dense_s"] = float(sum(np.interp(t, den_t.tokens, den_t.seconds) for t in stream.ls_tokens)
                                       * loop.blocks)
            r["copy_s"] = float(min(t["copy"] for t in timed))
            runs[(batch, cap, pre)] = best | {k: r[k] for k in ("table_expert_s", "table_dense_s", "copy_s")} | {
                "resident": cap >= n}
    fit = fit_host(runs)
    src = f"measured by bench/reference_loop.py on {where}: host time per phase inside the loop over a tiny shape, fitted"
    m = lambda v, what: Value(max(float(v), 0.0), "s", "measured", f"{src} ({what})", max(float(v), 0.0), max(float(v), 0.0))  # noqa: E731
    e = dict(base_runtime.entries)
    for k in [k for k in e if k.startswith("planner.") or k in ("host.block_issue", "host.expert_issue",
                                                                 "host.resident_expert_issue")]:
        del e[k]
    what = {"per_block": "per block", "per_expert": "per expert, its slot lookup included",
            "per_resident_expert": "per expert, its slot lookup included",
            "router_sync": "router and read-back per layer step",
            "layer_step": "cache work, the experts' output buffer and sum per layer step, beyond the router",
            "resident_layer_step": "the same with every expert resident",
            "copy_issue": "per copy, beyond the copy itself"}
    e.update({"host.per_kernel": m(0.0, "folded into per_block and per_expert")}
             | {f"host.{k}": m(fit[k], w) for k, w in what.items()})
    kernels = count_kernels(Loop(small, build_stream(trace, batch_size=1).layout, 2, 1))
    tmp.cleanup()
    for k, v in kernels.items():
        e[f"kernels.{k}"] = Value(float(v), "count", "measured", "counted: torch operations of the loop's functions",
                                  float(v), float(v))
    return dataclasses.replace(base_runtime, name="reference-loop", description="bench/reference_loop.py",
                               entries=e, host_is_device=True, block_issue_tables=(),
                               host_rule="measured on this machine by bench/reference_loop.py"), runs


def predict(stream, profile, runtime, capacity: int, prefetch: bool) -> float:
    from pregate.simulator.api import Simulation
    from pregate.simulator.engine import run_timed
    from pregate.simulator.settings import Settings

    st = Settings(speculation="oracle" if prefetch else "none", cache_policy="lru", cache=str(capacity),
                  prefetch_gate="off",  # the loop prefetches every named expert
                  batch_size=stream.batch_size, dtype="float32",
                  buffering="resident" if capacity >= stream.layout.n_objects else "cache")
    sim = Simulation(None, st, profile=profile, stream=stream, runtime=runtime)
    cache, planner, buffering, comp = sim._parts(st)
    if prefetch:
        planner.spec.depth = 1  # the loop prefetches the next layer step only
    out = run_timed(stream, sim.costs.for_policy("lru"), planner, cache, demand_dtype="float32",
                    prefetch_dtype="float32", copy_engines=1, all_resident=buffering.all_resident)
    lat = [s.latency_s for s in out.steps if s.decode]
    return float(np.mean(lat)), cache.counts


def main(argv=None) -> int:
    from pregate.simulator.profile import load_profile
    from pregate.simulator.runtime import load_runtime
    from pregate.simulator.settings import parse_cache_size
    from pregate.simulator.stream import build_stream
    from pregate.traces import open_trace

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--profile", required=True, help="hardware profile of this machine (pregate calibrate --device cpu)")
    ap.add_argument("--batch-size", default="1,16")
    ap.add_argument("--cache", default="25%,50%")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved runs per point; each step keeps its fastest")
    ap.add_argument("-o", "--out", default=None, help="write reference-loop.json and the runtime profile here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    where = "cpu (1 thread, the thread's CPU time), " + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    profile = load_profile(args.profile)
    runtime, fit_runs = measure_runtime(where, load_runtime("pregate-eager"))
    rows = []
    for path in args.traces:
        trace = open_trace(path)
        for batch in [int(b) for b in args.batch_size.split(",")]:
            stream = build_stream(trace, batch_size=batch)
            n = stream.layout.n_objects
            blocks = blocks_of(trace.meta, stream.layout)
            loop = Loop(trace.meta, stream.layout, 1, blocks)
            settings = [(n, False)] + [(parse_cache_size(c, n, 1), pre) for c in args.cache.split(",")
                                       for pre in (False, True)]
            results = {setting: [] for setting in settings}
            timed = []
            for _ in range(args.rounds):  # every setting once per round: a slow spell hits one round of a point
                # the tables in the same rounds, each token count keeping its fastest as each step does
                timed.append(time_tables(loop, TABLE_COUNTS, top_k_of(trace.meta)))
                for cap, pre in settings:
                    results[(cap, pre)].append(run(Loop(trace.meta, stream.layout, cap, blocks), stream, pre))
            exp_t, *den_t = tables(timed, trace.meta, TABLE_COUNTS, where)
            hw = dataclasses.replace(profile, expert_tables=(exp_t,), dense_tables=tuple(den_t))
            for cap, pre in settings:
                rounds = results[(cap, pre)]
                r = rounds[0]
                # each step's least time over the rounds (a step does the same work in every round)
                meas = float(np.mean(np.min([x["step_s"] for x in rounds], axis=0)))
                sim, counts = predict(stream, hw, runtime, cap, pre)
                rows.append({"trace": Path(path).name, "batch_size": batch, "cache_experts": cap,
                             "policy": "resident" if cap >= n else ("oracle+lru" if pre else "none+lru"),
                             "measured_mean_s": meas, "simulated_mean_s": sim, "rel_error": (sim - meas) / meas,
                             "measured_counts": r["counts"],
                             "simulated_counts": {"hits": counts.hits, "misses": counts.misses,
                                                  "prefetches": counts.prefetches}})
                print(f"{rows[-1]['trace'][:18]:18} b{batch:<3} {rows[-1]['policy']:11} cache {cap:>4}: measured "
                      f"{meas * 1e3:8.3f} ms, simulated {sim * 1e3:8.3f} ms ({rows[-1]['rel_error']:+.1%}); misses "
                      f"{r['counts']['misses']} / {counts.misses}", flush=True)
    err = np.abs([r["rel_error"] for r in rows])
    print(f"{len(rows)} points: median |error| {np.median(err):.1%}, P95 |error| {np.percentile(err, 95):.1%}")
    if args.out:
        from pregate.simulator.runtime import render_runtime

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "reference-loop.runtime.toml").write_text(render_runtime(runtime, "Written by bench/reference_loop.py."))
        (out / "reference-loop.json").write_text(json.dumps({"where": where, "points": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
