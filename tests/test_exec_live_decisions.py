"""A live model makes the planner's decisions: step by step, as on the trace of the same model and prompts.

Identical tokens prove the executor's arithmetic, not its cache: any decisions
would give them. Here a tiny model runs offloaded (its router live, pre-gating
computed live) and every layer step's hits, misses, prefetches, evictions and
background admissions are compared with those the simulator's planner makes on
the trace ``pregate trace`` records from the same model and prompts. The trace
keeps exact probabilities (``prob_bits=23``) so both rank pre-gating candidates
on the same numbers, and the cost gate is off: a live model has no cost model
to gate with.
"""

from __future__ import annotations

import copy

import pytest

from pregate.executor.run import OffloadedModel, load, prompt_ids
from pregate.simulator.api import Simulation
from pregate.simulator.settings import Settings
from pregate.traces import open_trace
from pregate.tracer.run import TraceSettings, trace

MODEL, PROMPTS, PROMPT_TOKENS, NEW_TOKENS, BATCH = "tiny-mixtral", 3, 24, 5, 2

SETTINGS = [
    Settings(cache="30%", speculation="multi_layer", cache_policy="lru"),
    Settings(cache="25%", speculation="layer_minus_1", cache_policy="lfu", per_layer=True),
    Settings(cache="5", speculation="adaptive", cache_policy="least-stale"),
    Settings(cache="6", speculation="transition", cache_policy="fifo", buffering="cpu_compute"),
]


def _settings(s: Settings, **changes) -> Settings:
    return s.replace(prefetch_gate="off", batch_size=BATCH, **changes)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    out = tmp_path_factory.mktemp("live") / "trace"
    trace(TraceSettings(model=MODEL, out=out, random_init=True, max_new_tokens=NEW_TOKENS, batch_size=BATCH,
                        max_prompt_tokens=PROMPT_TOKENS, limit=PROMPTS, prob_bits=23, progress=False))
    return open_trace(out)


@pytest.fixture(scope="module")
def model():
    loaded = load(MODEL, True, "float32", 0)
    return loaded, prompt_ids(loaded, limit=PROMPTS, max_tokens=PROMPT_TOKENS)


def _step(plan) -> tuple:
    return ([o for o, _ in plan.hits], [(o, c) for o, _, c in plan.misses], [o for o, _ in plan.cpu],
            list(plan.prefetches), list(plan.evicted), list(plan.admits))


def _planned_on_trace(trace_, settings: Settings) -> tuple[list[tuple], list[int]]:
    """The simulator's planner walked over the trace's stream (copies land before the next step, as on the CPU)."""
    sim = Simulation(trace_, settings)
    cache, planner, _, _ = sim._parts(settings)
    steps = []
    for ls in range(sim.stream.n_layer_steps):
        plan = planner.plan(ls)
        steps.append(_step(plan))
        for obj in [o for o, _, cached in plan.misses if cached] + plan.admits + plan.prefetches:
            cache.landed(obj)
    return steps, sim.stream.req_obj.tolist()


_LIVE: dict[str, tuple[list[tuple], list[int]]] = {}


def _run_live(model, settings: Settings) -> tuple[list[tuple], list[int]]:
    """The live model offloaded, every plan of its runtime's planner kept as it is made (once per setting)."""
    key = repr(settings)
    if key not in _LIVE:
        _LIVE[key] = _live(model, settings)
    return _LIVE[key]


def _live(model, settings: Settings) -> tuple[list[tuple], list[int]]:
    loaded, ids = model
    run = OffloadedModel(copy.deepcopy(loaded), settings)
    planner = run.runtime.planner
    plan_one, steps = planner.plan, []

    def plan(ls):
        p = plan_one(ls)
        steps.append(_step(p))
        return p

    planner.plan = plan
    run.generate(ids, NEW_TOKENS)
    return steps, list(planner.stream.req_obj)


def _first_difference(a: list[tuple], b: list[tuple]) -> str:
    names = ("hits", "misses", "cpu", "prefetches", "evicted", "admits")
    for ls, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return "; ".join(f"{n}: live {p} vs trace {q}" for n, p, q in zip(names, x, y) if p != q) + f" (layer step {ls})"
    return f"{len(a)} live layer steps vs {len(b)} on the trace"


@pytest.mark.slow
@pytest.mark.parametrize("base", SETTINGS, ids=lambda s: f"{s.speculation}-{s.cache_policy}-{s.cache}-{s.buffering}")
def test_live_model_makes_the_planners_decisions_on_its_trace(recorded, model, base):
    settings = _settings(base)
    live, live_requests = _run_live(model, settings)
    planned, trace_requests = _planned_on_trace(recorded, settings)
    assert live_requests == trace_requests, "the live model requested other experts than its trace records"
    assert len(live) == len(planned) > 0
    assert any(s[3] for s in planned) or settings.speculation == "none", "no prefetch: the check would mean little"
    assert any(s[4] for s in planned), "no eviction: the check would mean little"
    assert live == planned, _first_difference(live, planned)


@pytest.mark.slow
def test_the_comparison_tells_another_caching_policy_apart(recorded, model):
    """The check can fail: the live decisions under lru are not the planner's under fifo on the same trace."""
    settings = _settings(SETTINGS[0])
    live, _ = _run_live(model, settings)
    other, _ = _planned_on_trace(recorded, _settings(SETTINGS[0], cache_policy="fifo"))
    assert live != other
