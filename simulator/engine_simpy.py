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


def run_timed_simpy(stream: RequestStream, costs: CostTables, planner: Planner, cache: ExpertCache, *,
              demand_dtype: str, prefetch_dtype: str, copy_engines: int = 1, timeline: bool = False,
              all_resident: bool = False) -> TimedOutcome:
    """Simulate the whole stream; returns per-step latencies and their breakdown."""
    env = simpy.Environment()
    events = [] if timeline else None
    jobs: dict[int, Job] = {}  # obj -> its latest copy into the cache
    needs_dequant: dict[int, float] = {}
    cancelled = [0]

    def landed(job: Job) -> None:
        if jobs.get(job.obj) is job:
            del jobs[job.obj]
            cache.landed(job.obj)
            if costs.dequant[job.dtype]:
                needs_dequant[job.obj] = costs.dequant[job.dtype]

    copies = Pool([Worker(env, f"copy engine {k}", landed, events) for k in range(max(1, copy_engines))])
    cpu = Worker(env, "cpu pool", lambda job: None, events)

    def evicted(obj: int) -> None:
        job = jobs.pop(obj, None)
        if job is not None and job.state == QUEUED:
            job.state = CANCELLED
            cancelled[0] += 1
        needs_dequant.pop(obj, None)

    cache.evict_listener = evicted
    totals = {"compute": 0.0, "stall": 0.0, "dispatch": 0.0, "late": 0}
    steps: list[StepRecord] = []

    d_bytes, p_bytes = costs.expert_bytes[demand_dtype], costs.expert_bytes[prefetch_dtype]
    d_copy, p_copy = costs.copy[demand_dtype], costs.copy[prefetch_dtype]
    d_deq = costs.dequant[demand_dtype]
    expert_gpu, expert_cpu = costs.expert_gpu, costs.expert_cpu
    expert_host = costs.expert_host_resident if all_resident else costs.expert_host
    dense_gpu, dense_host, sync = as_list(costs.dense_gpu), as_list(costs.dense_host), costs.router_sync
    layer_step, resident_step, copy_issue = costs.layer_step, costs.resident_layer_step, costs.copy_issue
    pass_start = stream.pass_ls_start.tolist()

    def compute_stream():
        # Two clocks: ``h`` for the host thread, ``g`` for the GPU's compute stream. The host
        # issues work and runs ahead; a kernel starts once it is issued and the GPU is free;
        # the host waits for the GPU only at the router's read-back. SimPy time follows the
        # host: copies are submitted at the host's time, and the GPU's wait for a copy moves
        # SimPy time forward, which is safe because nothing is submitted before the next sync.
        h = g = 0.0
        for p in range(stream.n_passes):
            start = h
            comp = stall = 0.0
            hits = late = misses = prefetched = 0
            for ls in range(pass_start[p], pass_start[p + 1]):
                # dense blocks: issued over dense_host, run for dense_gpu
                gd = dense_gpu[ls]
                g_start = g if g > h else h
                h += dense_host[ls]
                g = g_start + gd
                if h > g:
                    g = h  # the last kernel cannot finish before it is issued
                comp += gd
                if events is not None:
                    events.append(("dense", "gpu", g_start, g - g_start))
                # the router's result comes back to the host: it waits for the GPU
                if g > h:
                    h = g
                h += sync
                # the host plans the layer step (the GPU is idle: nothing is queued)
                h += resident_step if all_resident else layer_step
                g = h
                if h > env.now:
                    yield env.timeout(h - env.now)
                plan = planner.plan(ls)
                ready, waiting = [], []
                for obj, tok in plan.hits:
                    job = jobs.get(obj)
                    if job is None:
                        ready.append((obj, tok))
                    else:
                        late += 1
                        if job.state == QUEUED and not job.demand:
                            copies.promote(job)
                        waiting.append((job, obj, tok, 0.0))
                hits += len(plan.hits)
                for obj, tok, cached in plan.misses:
                    job = Job(env, obj, d_copy, d_bytes, demand_dtype, True)
                    if cached:
                        jobs[obj] = job
                        copies.submit(job)
                        waiting.append((job, obj, tok, 0.0))
                    else:  # staging buffer: copied, used, dropped
                        copies.submit(job)
                        waiting.append((job, -1, tok, d_deq))
                for obj, tok in plan.cpu:
                    job = Job(env, obj, expert_cpu[tok], 0, demand_dtype, True)
                    cpu.submit(job)
                    waiting.append((job, -2, tok, 0.0))
                misses += len(plan.misses) + len(plan.cpu)
                for obj in plan.admits:  # a CPU-run miss copied in behind the demand copies
                    job = Job(env, obj, d_copy, d_bytes, demand_dtype, False)
                    jobs[obj] = job
                    copies.submit(job)
                for obj in plan.prefetches:
                    job = Job(env, obj, p_copy, p_bytes, prefetch_dtype, False)
                    jobs[obj] = job
                    copies.submit(job)
                prefetched += len(plan.prefetches)
                h += copy_issue * (len(plan.misses) + len(plan.admits) + len(plan.prefetches))
                # experts: hits first, then those waiting for a copy (or the CPU)
                for obj, tok in ready:
                    ge = expert_gpu[tok] + (needs_dequant.pop(obj, 0.0) if needs_dequant else 0.0)
                    comp += ge
                    h += expert_host
                    g = (g if g > h - expert_host else h - expert_host) + ge
                    if h > g:
                        g = h
                for job, obj, tok, extra in waiting:
                    h += 0.0 if obj == -2 else expert_host
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
                            stall += landed_at - ready_at
                            ready_at = landed_at
                    if obj == -2:  # computed on the CPU; only the result comes back
                        g = ready_at
                        continue
                    ge = expert_gpu[tok] + extra + (needs_dequant.pop(obj, 0.0) if obj >= 0 and needs_dequant else 0.0)
                    comp += ge
                    g = ready_at + ge
                    if h > g:
                        g = h
            # the pass ends when the host has read the last result back
            if g > h:
                h = g
            g = h
            latency = h - start
            steps.append(StepRecord(p, int(stream.pass_group[p]), int(stream.pass_step[p]), bool(stream.pass_decode[p]),
                                    int(stream.pass_seqs[p]) if stream.pass_decode[p] else int(stream.ls_tokens[pass_start[p]]),
                                    start, latency, comp, stall, max(latency - comp - stall, 0.0),
                                    hits - late, late, misses, prefetched))
            totals["compute"] += comp
            totals["stall"] += stall
            totals["dispatch"] += max(latency - comp - stall, 0.0)
            totals["late"] += late
        if h > env.now:
            yield env.timeout(h - env.now)
        totals["end"] = h

    env.process(compute_stream())
    env.run()
    return TimedOutcome(
        total_s=totals["end"], steps=steps, late_hits=totals["late"], bytes_moved=copies.moved,
        cancelled_copies=cancelled[0], compute_s=totals["compute"], stall_s=totals["stall"],
        dispatch_s=totals["dispatch"], events=events or [],
    )
