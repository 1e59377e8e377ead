"""The timed run, event-lean: the SimPy model of ``engine_simpy.py`` with its clocks advanced arithmetically.

Why: the SimPy reference spends several events per layer step (a wake, a
timeout and a completion per copy, a timeout per wait), and dispatching them
was most of a timed run's time. Yet every one of those events is
deterministic: a copy engine runs one job at a time from its two queues
(demand before prefetch, in order), so when each job starts and lands follows
from the submissions alone. This engine keeps the same model and the same
decisions (the shared planner) but computes those times directly:

* the **compute stream** (host thread and GPU stream, two clocks, exactly the
  reference's recurrence) walks the layer steps;
* each **copy engine** (and the CPU pool) is a small server object holding its
  two queues and at most one pending event: the landing of the job it is
  running, or its pick-up of a job submitted while it was idle;
* whenever the compute stream would have met SimPy (the router's read-back,
  a wait for a copy) the servers are advanced to that moment, processing their
  pending events in SimPy's order: by time, then by the order they were
  scheduled (``seq``, SimPy's event id). That tie rule is what makes equal
  times resolve as the reference resolves them.

Its clock reproduces SimPy's arithmetic too (a timeout lands at
``now + (t - now)``, a wait for a copy at the copy's end), so the results are
not just close but identical: the tests compare every field of every step
with the reference on every registered policy pair, and against outcomes
recorded before this engine existed.
"""

from __future__ import annotations

from collections import deque

from pregate.simulator.cache import ExpertCache
from pregate.simulator.costs import CostTables
from pregate.simulator import engine_compiled_prefetch
from pregate.simulator.engine_compiled import eligible, run_compiled
from pregate.simulator.outcome import StepRecord, TimedOutcome
from pregate.simulator.planner import Planner
from pregate.simulator.stream import RequestStream, as_list

QUEUED, RUNNING, DONE, CANCELLED = 0, 1, 2, 3
INF = float("inf")

__all__ = ["StepRecord", "TimedOutcome", "run_timed"]


class Job:
    """One copy (or one CPU expert computation); ``end`` is set when a server starts it."""

    __slots__ = ("obj", "seconds", "nbytes", "dtype", "demand", "state", "start", "end")

    def __init__(self, obj, seconds, nbytes, dtype, demand):
        self.obj, self.seconds, self.nbytes, self.dtype, self.demand = obj, seconds, nbytes, dtype, demand
        self.state = QUEUED
        self.start = self.end = INF


class Server:
    """A copy engine (or the CPU pool): one job at a time, demand queue before prefetch queue.

    ``ev_t``/``ev_seq`` is its one pending event (INF when idle and waiting):
    the end of ``job`` when running, else the pick-up after a submission woke it.
    """

    __slots__ = ("name", "demand", "prefetch", "job", "woken", "ev_t", "ev_seq", "moved")

    def __init__(self, name: str):
        self.name = name
        self.demand: deque[Job] = deque()
        self.prefetch: deque[Job] = deque()
        self.job: Job | None = None
        self.woken = False
        self.ev_t = self.ev_seq = INF
        self.moved = 0

    def busy(self) -> int:
        """1 unless idle and waiting (the reference's ``wake is None or wake.triggered``)."""
        return 0 if (self.job is None and not self.woken) else 1


def run_timed(stream: RequestStream, costs: CostTables, planner: Planner, cache: ExpertCache, *,
              demand_dtype: str, prefetch_dtype: str, copy_engines: int = 1, timeline: bool = False,
              all_resident: bool = False, reference: bool = False, compiled: bool = True) -> TimedOutcome:
    """Simulate the whole stream; returns per-step latencies and their breakdown.

    Settings the compiled kernel covers (on-demand lru/fifo, see ``engine_compiled``) run
    there when numba is installed, unless ``compiled=False``; ``reference=True`` runs the
    SimPy reference engine instead. All three give identical results.
    """
    if not reference and compiled and eligible(planner, cache, timeline, all_resident):
        return run_compiled(stream, costs, planner, cache, demand_dtype=demand_dtype, copy_engines=copy_engines)
    if not reference and compiled and engine_compiled_prefetch.eligible(planner, cache, timeline, all_resident):
        return engine_compiled_prefetch.run_compiled(stream, costs, planner, cache, demand_dtype=demand_dtype,
                                                     prefetch_dtype=prefetch_dtype, copy_engines=copy_engines)
    if reference:
        from pregate.simulator.engine_simpy import run_timed_simpy

        outcome = run_timed_simpy(stream, costs, planner, cache, demand_dtype=demand_dtype,
                                  prefetch_dtype=prefetch_dtype, copy_engines=copy_engines, timeline=timeline,
                                  all_resident=all_resident)
        outcome.engine = "simpy (reference)"
        return outcome
    events = [] if timeline else None
    jobs: dict[int, Job] = {}  # obj -> its latest copy into the cache
    needs_dequant: dict[int, float] = {}
    cancelled = 0
    seq = 0  # SimPy's event ids, for the servers' events and the compute stream's timeouts
    copies = [Server(f"copy engine {k}") for k in range(max(1, copy_engines))]
    cpu = Server("cpu pool")
    servers = copies + [cpu]
    dequant = costs.dequant

    def pick(s: Server, t: float) -> None:
        nonlocal seq
        demand, prefetch = s.demand, s.prefetch
        while True:
            if demand:
                job = demand.popleft()
            elif prefetch:
                job = prefetch.popleft()
            else:
                s.job = None
                s.ev_t = s.ev_seq = INF
                return
            if job.state == QUEUED:
                break
        job.state = RUNNING
        job.start = t
        job.end = end = t + job.seconds
        s.job = job
        seq += 1
        s.ev_t, s.ev_seq = end, seq

    def process(s: Server) -> None:
        """The server's pending event: a pick-up after a wake, or a landing and the next pick-up."""
        if s.woken:
            s.woken = False
            pick(s, s.ev_t)
            return
        job = s.job
        job.state = DONE
        s.moved += job.nbytes
        if events is not None:
            events.append((f"{'demand' if job.demand else 'prefetch'} {job.obj}", s.name, job.start, job.seconds))
        if s is not cpu and jobs.get(job.obj) is job:  # the copy landed in the cache
            del jobs[job.obj]
            cache.landed(job.obj)
            if dequant[job.dtype]:
                needs_dequant[job.obj] = dequant[job.dtype]
        pick(s, job.end)

    def advance(t: float, sq: float) -> None:
        """Process every server event before (t, sq) in SimPy's order: time, then event id."""
        while True:
            first = None
            for s in servers:
                if s.ev_t < t or (s.ev_t == t and s.ev_seq < sq):
                    if first is None or s.ev_t < first.ev_t or (s.ev_t == first.ev_t and s.ev_seq < first.ev_seq):
                        first = s
            if first is None:
                return
            process(first)

    def wait_done(job: Job) -> float:
        """The compute stream waits for ``job``: run the servers until it lands, then past its
        landing time (every event at that time was scheduled before the landing's own)."""
        while job.state != DONE:
            first = None
            for s in servers:
                if first is None or s.ev_t < first.ev_t or (s.ev_t == first.ev_t and s.ev_seq < first.ev_seq):
                    first = s
            process(first)
        advance(job.end, INF)
        return job.end

    def submit(s: Server, job: Job, now: float) -> None:
        nonlocal seq
        (s.demand if job.demand else s.prefetch).append(job)
        if s.job is None and not s.woken:
            s.woken = True
            seq += 1
            s.ev_t, s.ev_seq = now, seq

    def submit_copy(job: Job, now: float) -> None:
        best = copies[0]
        if len(copies) > 1:
            best = min(copies, key=lambda w: len(w.demand) + len(w.prefetch) + w.busy())
        submit(best, job, now)

    def promote(job: Job) -> None:
        """A queued prefetch is needed now: move it ahead of the other prefetches."""
        job.demand = True
        for s in copies:
            if job in s.prefetch:
                s.prefetch.remove(job)
                s.demand.append(job)
                return

    def evicted(obj: int) -> None:
        nonlocal cancelled
        job = jobs.pop(obj, None)
        if job is not None and job.state == QUEUED:
            job.state = CANCELLED
            cancelled += 1
        needs_dequant.pop(obj, None)

    tot_compute = tot_stall = tot_dispatch = 0.0
    tot_late = 0
    steps: list[StepRecord] = []

    d_bytes, p_bytes = costs.expert_bytes[demand_dtype], costs.expert_bytes[prefetch_dtype]
    d_copy, p_copy = costs.copy[demand_dtype], costs.copy[prefetch_dtype]
    d_deq = costs.dequant[demand_dtype]
    expert_gpu, expert_cpu = costs.expert_gpu, costs.expert_cpu
    expert_host = costs.expert_host_resident if all_resident else costs.expert_host
    dense_gpu, dense_host, sync = as_list(costs.dense_gpu), as_list(costs.dense_host), costs.router_sync
    step_host = costs.resident_layer_step if all_resident else costs.layer_step
    copy_issue = costs.copy_issue
    pass_start = stream.pass_ls_start.tolist()
    plan_of = planner.plan

    # Two clocks: ``h`` for the host thread, ``g`` for the GPU's compute stream, and ``now``,
    # SimPy's clock in the reference (it follows the host, and the waits for copies).
    h = g = now = 0.0
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
                g = h
            comp += gd
            if events is not None:
                events.append(("dense", "gpu", g_start, g - g_start))
            # the router's result comes back to the host: it waits for the GPU
            if g > h:
                h = g
            h += sync
            h += step_host
            g = h
            if h > now:  # the reference's timeout to the router's read-back
                seq += 1
                t = now + (h - now)
                advance(t, seq)
                now = t
            plan = plan_of(ls)
            for obj in plan.evicted:  # before this step's copies: an expert may be evicted and prefetched again
                evicted(obj)
            ready, waiting = [], []
            for obj, tok in plan.hits:
                job = jobs.get(obj)
                if job is None:
                    ready.append((obj, tok))
                else:
                    late += 1
                    if job.state == QUEUED and not job.demand:
                        promote(job)
                    waiting.append((job, obj, tok, 0.0))
            hits += len(plan.hits)
            for obj, tok, cached in plan.misses:
                job = Job(obj, d_copy, d_bytes, demand_dtype, True)
                if cached:
                    jobs[obj] = job
                    submit_copy(job, now)
                    waiting.append((job, obj, tok, 0.0))
                else:  # staging buffer: copied, used, dropped
                    submit_copy(job, now)
                    waiting.append((job, -1, tok, d_deq))
            for obj, tok in plan.cpu:
                job = Job(obj, expert_cpu[tok], 0, demand_dtype, True)
                submit(cpu, job, now)
                waiting.append((job, -2, tok, 0.0))
            misses += len(plan.misses) + len(plan.cpu)
            for obj in plan.admits:  # a CPU-run miss copied in behind the demand copies
                job = Job(obj, d_copy, d_bytes, demand_dtype, False)
                jobs[obj] = job
                submit_copy(job, now)
            for obj in plan.prefetches:
                job = Job(obj, p_copy, p_bytes, prefetch_dtype, False)
                jobs[obj] = job
                submit_copy(job, now)
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
                if job.state != DONE:
                    if ready_at > now:  # the reference's timeout to the GPU's ready time
                        seq += 1
                        t = now + (ready_at - now)
                        advance(t, seq)
                        now = t
                    if job.state != DONE:
                        now = wait_done(job)
                if now > ready_at:
                    # the GPU waited for the copy (or the CPU) past the time it could have started
                    if events is not None:
                        events.append(("stall", "gpu", ready_at, now - ready_at))
                    stall += now - ready_at
                    ready_at = now
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
        tot_compute += comp
        tot_stall += stall
        tot_dispatch += max(latency - comp - stall, 0.0)
        tot_late += late
    if h > now:
        seq += 1
        now = now + (h - now)
    advance(INF, INF)  # the copies still queued or running complete after the last step
    return TimedOutcome(
        total_s=h, steps=steps, late_hits=tot_late, bytes_moved=sum(s.moved for s in copies),
        cancelled_copies=cancelled, compute_s=tot_compute, stall_s=tot_stall,
        dispatch_s=tot_dispatch, events=events or [], engine="event-lean (python)",
    )
