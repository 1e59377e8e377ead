"""The reference timed run: a SimPy simulation of the GPU stream, the copy engines and the CPU pool.

This is the model of record: the event-lean engine (``engine.py``) must give
results identical to it, and the tests compare the two on every registered
policy pair. It spends several SimPy events per layer step (a wake, a timeout
and a completion per copy, a timeout per wait), so it is the slow, obviously
faithful statement of the model, kept for that comparison.

One SimPy process per resource, not one per expert access:

* the **compute stream** walks the layer steps. It folds in the host thread
  that dispatches its kernels, because the two synchronise at every MoE layer
  (the host must read the router's choice before it can issue copies), so
  between two router reads their interplay is ``max(dispatch, compute)``;
  keeping them in one process saves an event per layer step;
* each **copy engine** takes copies from two queues, demand misses before
  prefetches (a queued prefetch that becomes urgent is promoted), one copy at
  a time;
* the optional **CPU pool** computes missed experts where their weights are
  (``cpu_compute`` buffering).

The compute stream keeps a local clock ahead of SimPy's and only yields when
it must meet another process: to issue copies at the router's time, or to
wait for a copy that has not landed. Decisions come from the shared planner,
so the counts match the fast replay's.
"""

from __future__ import annotations

from collections import deque
import simpy

from pregate.simulator.cache import ExpertCache
from pregate.simulator.costs import CostTables
from pregate.simulator.outcome import StepRecord, TimedOutcome
from pregate.simulator.planner import Planner
from pregate.simulator.stream import RequestStream, as_list

QUEUED, RUNNING, DONE, CANCELLED = 0, 1, 2, 3


class Job:
    """One copy (or one CPU expert computation) and the event that fires when it is done."""

    __slots__ = ("obj", "seconds", "nbytes", "dtype", "done", "state", "demand")

    def __init__(self, env, obj, seconds, nbytes, dtype, demand):
        self.obj, self.seconds, self.nbytes, self.dtype, self.demand = obj, seconds, nbytes, dtype, demand
        self.done = env.event()
        self.state = QUEUED


class Worker:
    """A resource that runs jobs one at a time from a demand and a prefetch queue."""

    def __init__(self, env: simpy.Environment, name: str, on_done, events):
        self.env, self.name, self.on_done, self.events = env, name, on_done, events
        self.demand: deque[Job] = deque()
        self.prefetch: deque[Job] = deque()
        self.wake = None
        self.moved = 0
        env.process(self.loop())

    def submit(self, job: Job) -> None:
        (self.demand if job.demand else self.prefetch).append(job)
        if self.wake is not None and not self.wake.triggered:
            self.wake.succeed()

    def loop(self):
        env = self.env
        while True:
            job = None
            while job is None:
                if self.demand:
                    job = self.demand.popleft()
                elif self.prefetch:
                    job = self.prefetch.popleft()
                else:
                    self.wake = env.event()
                    yield self.wake
                    continue
                if job.state != QUEUED:
                    job = None  # cancelled, or promoted and already taken from the other queue
            job.state = RUNNING
            start = env.now
            yield env.timeout(job.seconds)
            job.state = DONE
            self.moved += job.nbytes
            if self.events is not None:
                self.events.append((f"{'demand' if job.demand else 'prefetch'} {job.obj}", self.name, start, job.seconds))
            self.on_done(job)
            job.done.succeed()


class Pool:
    """Several workers sharing the queues (copy engines): the least loaded takes a job."""

    def __init__(self, workers: list[Worker]):
        self.workers = workers

    def submit(self, job: Job) -> None:
        best = min(self.workers, key=lambda w: len(w.demand) + len(w.prefetch) + (w.wake is None or w.wake.triggered))
        best.submit(job)

    def promote(self, job: Job) -> None:
        """A queued prefetch is needed now: move it ahead of the other prefetches."""
        job.demand = True
        for worker in self.workers:
            if job in worker.prefetch:
                worker.prefetch.remove(job)
                worker.demand.append(job)
                return

    @property
    def moved(self) -> int:
        return sum(w.moved for w in self.workers)


class _PassTally:
    """What one forward pass adds up: compute and stall time, and the expert accesses by kind."""

    __slots__ = ("comp", "stall", "hits", "late", "misses", "prefetched")

    def __init__(self):
        self.comp = self.stall = 0.0
        self.hits = self.late = self.misses = self.prefetched = 0


class _Transfers:
    """The copy engines and the CPU pool, with the cache's view of which copies are still in flight.

    ``jobs`` maps an expert to its latest copy into the cache: a hit on an expert whose copy has
    not landed is a late hit. Each plan lists the experts its decisions evicted, so a queued copy
    of one is cancelled; a landed copy tells the cache the expert is usable.
    """

    def __init__(self, env: simpy.Environment, costs: CostTables, cache: ExpertCache, copy_engines: int, events):
        self.cache, self.dequant = cache, costs.dequant
        self.jobs: dict[int, Job] = {}
        self.needs_dequant: dict[int, float] = {}
        self.cancelled = 0
        self.copies = Pool([Worker(env, f"copy engine {k}", self.landed, events) for k in range(max(1, copy_engines))])
        self.cpu = Worker(env, "cpu pool", lambda job: None, events)

    def landed(self, job: Job) -> None:
        if self.jobs.get(job.obj) is job:
            del self.jobs[job.obj]
            self.cache.landed(job.obj)
            if self.dequant[job.dtype]:
                self.needs_dequant[job.obj] = self.dequant[job.dtype]

    def evicted(self, obj: int) -> None:
        job = self.jobs.pop(obj, None)
        if job is not None and job.state == QUEUED:
            job.state = CANCELLED
            self.cancelled += 1
        self.needs_dequant.pop(obj, None)


class _ComputeStream:
    """The compute stream's process: the host thread and the GPU walking the layer steps.

    Two clocks: ``h`` for the host thread, ``g`` for the GPU's compute stream. The host issues
    work and runs ahead; a kernel starts once it is issued and the GPU is free; the host waits
    for the GPU only at the router's read-back. SimPy time follows the host: copies are
    submitted at the host's time, and the GPU's wait for a copy moves SimPy time forward, which
    is safe because nothing is submitted before the next sync.
    """

    def __init__(self, env: simpy.Environment, stream: RequestStream, costs: CostTables, planner: Planner,
                 transfers: _Transfers, *, demand_dtype: str, prefetch_dtype: str, all_resident: bool, events):
        self.env, self.stream, self.planner, self.t, self.events = env, stream, planner, transfers, events
        self.all_resident = all_resident
        self.demand_dtype, self.prefetch_dtype = demand_dtype, prefetch_dtype
        self.d_bytes, self.p_bytes = costs.expert_bytes[demand_dtype], costs.expert_bytes[prefetch_dtype]
        self.d_copy, self.p_copy = costs.copy[demand_dtype], costs.copy[prefetch_dtype]
        self.d_deq = costs.dequant[demand_dtype]
        self.expert_gpu, self.expert_cpu = costs.expert_gpu, costs.expert_cpu
        self.expert_host = costs.expert_host_resident if all_resident else costs.expert_host
        self.dense_gpu, self.dense_host = as_list(costs.dense_gpu), as_list(costs.dense_host)
        self.sync, self.copy_issue = costs.router_sync, costs.copy_issue
        self.plan_cost = costs.resident_layer_step if all_resident else costs.layer_step
        self.pass_start = stream.pass_ls_start.tolist()
        self.h = self.g = 0.0
        self.steps: list[StepRecord] = []
        self.totals = {"compute": 0.0, "stall": 0.0, "dispatch": 0.0, "late": 0}

    def run(self):
        """The SimPy process: every forward pass, then the host's final clock as the run's end."""
        for p in range(self.stream.n_passes):
            yield from self.forward_pass(p)
        if self.h > self.env.now:
            yield self.env.timeout(self.h - self.env.now)
        self.totals["end"] = self.h

    def forward_pass(self, p: int):
        """One forward pass: each layer step's dense block, router read-back, plan and experts."""
        start = self.h
        tally = _PassTally()
        for ls in range(self.pass_start[p], self.pass_start[p + 1]):
            self.dense_block(ls, tally)
            self.read_router(ls)
            if self.h > self.env.now:
                yield self.env.timeout(self.h - self.env.now)
            ready, waiting = self.issue_plan(ls, tally)
            self.run_ready(ready, tally)
            yield from self.run_waiting(waiting, tally)
        self.end_pass(p, start, tally)

    def dense_block(self, ls: int, tally: _PassTally) -> None:
        """The dense blocks: issued over ``dense_host``, run for ``dense_gpu``."""
        gd = self.dense_gpu[ls]
        h, g = self.h, self.g
        g_start = g if g > h else h
        h += self.dense_host[ls]
        g = g_start + gd
        if h > g:
            g = h  # the last kernel cannot finish before it is issued
        tally.comp += gd
        if self.events is not None:
            self.events.append(("dense", "gpu", g_start, g - g_start))
        self.h, self.g = h, g

    def read_router(self, ls: int) -> None:
        """The router's result comes back to the host (it waits for the GPU), then the host plans
        the layer step while the GPU idles: nothing is queued."""
        h = self.h
        if self.g > h:
            h = self.g
        h += self.sync
        h += self.plan_cost
        self.h = self.g = h

    def issue_plan(self, ls: int, tally: _PassTally) -> tuple[list, list]:
        """Ask the planner for the layer step and submit its copies and CPU computations.

        Returns the experts ready now and those that wait for a job, as ``(job, obj, token, extra)``
        with ``obj`` -1 for a staging-buffer copy (used once, dropped) and -2 for a CPU computation.
        """
        env, t, jobs = self.env, self.t, self.t.jobs
        plan = self.planner.plan(ls)
        for obj in plan.evicted:  # before this step's copies: an expert may be evicted and prefetched again
            t.evicted(obj)
        ready, waiting = [], []
        for obj, tok in plan.hits:
            job = jobs.get(obj)
            if job is None:
                ready.append((obj, tok))
            else:
                tally.late += 1
                if job.state == QUEUED and not job.demand:
                    t.copies.promote(job)
                waiting.append((job, obj, tok, 0.0))
        tally.hits += len(plan.hits)
        for obj, tok, cached in plan.misses:
            job = Job(env, obj, self.d_copy, self.d_bytes, self.demand_dtype, True)
            if cached:
                jobs[obj] = job
                t.copies.submit(job)
                waiting.append((job, obj, tok, 0.0))
            else:  # staging buffer: copied, used, dropped
                t.copies.submit(job)
                waiting.append((job, -1, tok, self.d_deq))
        for obj, tok in plan.cpu:
            job = Job(env, obj, self.expert_cpu[tok], 0, self.demand_dtype, True)
            t.cpu.submit(job)
            waiting.append((job, -2, tok, 0.0))
        tally.misses += len(plan.misses) + len(plan.cpu)
        for obj in plan.admits:  # a CPU-run miss copied in behind the demand copies
            job = Job(env, obj, self.d_copy, self.d_bytes, self.demand_dtype, False)
            jobs[obj] = job
            t.copies.submit(job)
        for obj in plan.prefetches:
            job = Job(env, obj, self.p_copy, self.p_bytes, self.prefetch_dtype, False)
            jobs[obj] = job
            t.copies.submit(job)
        tally.prefetched += len(plan.prefetches)
        self.h += self.copy_issue * (len(plan.misses) + len(plan.admits) + len(plan.prefetches))
        return ready, waiting

    def run_ready(self, ready: list, tally: _PassTally) -> None:
        """The experts already in GPU memory run first, each issued by the host in turn."""
        expert_gpu, expert_host, needs_dequant = self.expert_gpu, self.expert_host, self.t.needs_dequant
        h, g = self.h, self.g
        for obj, tok in ready:
            ge = expert_gpu[tok] + (needs_dequant.pop(obj, 0.0) if needs_dequant else 0.0)
            tally.comp += ge
            h += expert_host
            g = (g if g > h - expert_host else h - expert_host) + ge
            if h > g:
                g = h
        self.h, self.g = h, g

    def run_waiting(self, waiting: list, tally: _PassTally):
        """The experts that wait for a copy (or the CPU): the GPU stalls for any not yet done."""
        env, events, expert_gpu, expert_host = self.env, self.events, self.expert_gpu, self.expert_host
        needs_dequant = self.t.needs_dequant
        for job, obj, tok, extra in waiting:
            self.h += 0.0 if obj == -2 else expert_host
            h, g = self.h, self.g
            ready_at = g if g > h - expert_host else h - expert_host
            if not job.done.processed:
                if ready_at > env.now:
                    yield env.timeout(ready_at - env.now)
                if not job.done.processed:
                    yield job.done
            if env.now > ready_at and job.done.processed:
                # the GPU waited for the copy (or the CPU) past the time it could have started
                landed_at = env.now
                if landed_at > ready_at:
                    if events is not None:
                        events.append(("stall", "gpu", ready_at, landed_at - ready_at))
                    tally.stall += landed_at - ready_at
                    ready_at = landed_at
            if obj == -2:  # computed on the CPU; only the result comes back
                self.g = ready_at
                continue
            ge = expert_gpu[tok] + extra + (needs_dequant.pop(obj, 0.0) if obj >= 0 and needs_dequant else 0.0)
            tally.comp += ge
            g = ready_at + ge
            if h > g:
                g = h
            self.g = g

    def end_pass(self, p: int, start: float, tally: _PassTally) -> None:
        """The pass ends when the host has read the last result back: record its step."""
        if self.g > self.h:
            self.h = self.g
        self.g = self.h
        latency = self.h - start
        stream, comp, stall = self.stream, tally.comp, tally.stall
        decode = stream.pass_decode[p]
        tokens = int(stream.pass_seqs[p]) if decode else int(stream.ls_tokens[self.pass_start[p]])
        self.steps.append(StepRecord(p, int(stream.pass_group[p]), int(stream.pass_step[p]), bool(decode), tokens,
                                     start, latency, comp, stall, max(latency - comp - stall, 0.0),
                                     tally.hits - tally.late, tally.late, tally.misses, tally.prefetched))
        totals = self.totals
        totals["compute"] += comp
        totals["stall"] += stall
        totals["dispatch"] += max(latency - comp - stall, 0.0)
        totals["late"] += tally.late


def run_timed_simpy(stream: RequestStream, costs: CostTables, planner: Planner, cache: ExpertCache, *,
                    demand_dtype: str, prefetch_dtype: str, copy_engines: int = 1, timeline: bool = False,
                    all_resident: bool = False) -> TimedOutcome:
    """Simulate the whole stream; returns per-step latencies and their breakdown."""
    env = simpy.Environment()
    events = [] if timeline else None
    transfers = _Transfers(env, costs, cache, copy_engines, events)
    compute = _ComputeStream(env, stream, costs, planner, transfers, demand_dtype=demand_dtype,
                             prefetch_dtype=prefetch_dtype, all_resident=all_resident, events=events)
    env.process(compute.run())
    env.run()
    totals = compute.totals
    return TimedOutcome(
        total_s=totals["end"], steps=compute.steps, late_hits=totals["late"], bytes_moved=transfers.copies.moved,
        cancelled_copies=transfers.cancelled, compute_s=totals["compute"], stall_s=totals["stall"],
        dispatch_s=totals["dispatch"], events=events or [],
    )
