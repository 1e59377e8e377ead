"""The lower bound on step time: no registered policy beats it (property test), and it means something."""

from functools import lru_cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, reject, settings as hsettings, strategies as st

from pregate.simulator.errors import SimulatorError

from pregate.simulator import Settings, Simulation
from pregate.simulator.api import _mean_step
from pregate.simulator.lower_bound import min_loads
from pregate.simulator.policies import BUFFERING, CACHING, COMPRESSION, SPECULATION
from pregate.simulator.replay import replay_fast
from pregate.simulator.stream import build_stream
from pregate.simulator.synthetic import make_trace
from pregate.traces import open_trace

_DIR = {}


@lru_cache(maxsize=None)
def _trace(layers, experts, top_k, seqs, prompt_len, new_tokens, encoder, seed):
    import tempfile

    root = _DIR.setdefault("root", tempfile.mkdtemp(prefix="pregate-bound-"))
    path = make_trace(f"{root}/{layers}-{experts}-{top_k}-{seqs}-{prompt_len}-{new_tokens}-{encoder}-{seed}",
                      layers=layers, experts=experts, top_k=top_k, seqs=seqs, prompt_len=prompt_len,
                      new_tokens=new_tokens, encoder_layers=encoder, ahead=3, seed=seed)
    return open_trace(path)


@lru_cache(maxsize=None)
def _sim(trace_args, batch, profile):
    return Simulation(_trace(*trace_args), Settings(batch_size=batch, profile=profile))


traces = st.tuples(st.integers(2, 4), st.sampled_from([4, 8]), st.integers(1, 2), st.integers(1, 3),
                   st.sampled_from([0, 3]), st.integers(2, 5), st.sampled_from([0, 2]), st.integers(0, 3))


@given(trace_args=traces, batch=st.integers(1, 2), profile=st.sampled_from(["rtx3090", "h200", "t4"]),
       spec=st.sampled_from(SPECULATION.names()), policy=st.sampled_from(CACHING.names()),
       buffering=st.sampled_from(BUFFERING.names()), compression=st.sampled_from(COMPRESSION.names()),
       cache=st.floats(0.0, 1.0), engines=st.integers(0, 2), gate=st.sampled_from(["cost", "off"]),
       per_layer=st.booleans(), reset=st.booleans())
@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
def test_no_registered_policy_beats_the_lower_bound(trace_args, batch, profile, spec, policy, buffering, compression,
                                                    cache, engines, gate, per_layer, reset):
    sim = _sim(trace_args, batch, profile)
    n = sim.stream.layout.n_objects
    # a per-layer cache needs a slot for every layer (a smaller one is refused, not simulated)
    per_layer = per_layer and int(round(cache * n)) >= sim.stream.layout.n_layers
    s = Settings(speculation=spec, cache_policy=policy, buffering=buffering, compression=compression,
                 cache=str(int(round(cache * n))), copy_engines=engines, prefetch_gate=gate, per_layer=per_layer,
                 reset_cache_per_sequence=reset, batch_size=batch, profile=profile)
    try:
        outcome, _ = sim.timed(s)
    except SimulatorError:  # refused in one line (a per-layer cache too small, a predictor without data)
        reject()
    mean = _mean_step(outcome)
    bound = sim.lower_bound(s)
    assert bound > 0
    assert mean >= bound * (1 - 1e-9), (s, mean, bound)


def test_every_policy_pair_respects_the_bound_on_a_top2_trace():
    """The exhaustive version on one trace: every speculation x caching pair at three cache sizes."""
    sim = _sim((4, 8, 2, 3, 3, 5, 0, 1), 2, "rtx3090")
    for spec in SPECULATION.names():
        for policy in CACHING.names():
            for cache in ("10%", "25%", "50%"):
                s = Settings(speculation=spec, cache_policy=policy, cache=cache, batch_size=2)
                mean = _mean_step(sim.timed(s)[0])
                assert mean >= sim.lower_bound(s) * (1 - 1e-9), (spec, policy, cache)


def test_min_loads_is_belady():
    stream = build_stream(_trace(4, 8, 1, 3, 0, 5, 0, 2), batch_size=1)
    objs = stream.req_obj.tolist()
    for capacity in (1, 3, 7, 16, 40):
        assert min_loads(objs, capacity) == replay_fast(stream, "belady", capacity, 1).misses


def test_on_a_transfer_bound_trace_the_link_term_dominates():
    """Tiny cache, huge copies: the bound is far above the all-resident time, and the best
    on-demand policy comes within a small factor of it."""
    from pregate.simulator.recommend import _meta_from_shape
    from pregate.traces.importers.model_shapes import known_model
    import tempfile

    meta = _meta_from_shape(known_model("mixtral-8x7b"))
    path = make_trace(tempfile.mkdtemp(prefix="pregate-mix-") + "/m", seqs=2, prompt_len=0, new_tokens=6, meta=meta,
                      seed=3)
    sim = Simulation(path, Settings())
    s = Settings(cache="25%", cache_policy="belady")
    result = sim.run(s).summary
    assert result["bound_lower_mean_step_latency_s"] > 3 * result["bound_resident_mean_step_latency_s"]
    assert 1.0 <= result["ratio_to_lower_bound"] < 1.6
    assert np.isfinite(result["ratio_to_oracle"])
