"""Memory-lean pieces of the simulator give the values of their whole-stream formulas exactly."""

import numpy as np

from pregate.simulator import Settings, Simulation
from pregate.simulator.gate import timing_from_costs
from pregate.simulator.synthetic import make_trace
from pregate.traces import open_trace


def _whole_stream_steps(stream, costs):
    """The gate's per-layer-step seconds as one vectorised formula over the whole stream."""
    per_req = np.maximum(np.asarray(costs.expert_gpu)[stream.req_tokens.astype(np.int64)], costs.expert_host)
    csum = np.concatenate([[0.0], np.cumsum(per_req)])
    starts = stream.ls_req_start
    experts = csum[starts[1:]] - csum[starts[:-1]]
    dense = np.maximum(np.asarray(costs.dense_gpu), np.asarray(costs.dense_host)) + costs.router_sync + costs.layer_step
    return (experts + np.append(dense[1:], 0.0)).tolist()


def test_chunked_gate_timing_equals_the_whole_stream_formula(tmp_path):
    trace = open_trace(make_trace(tmp_path / "t", seqs=5, prompt_len=4, new_tokens=9, layers=4, experts=8, top_k=2,
                                  ahead=2, seed=3))
    sim = Simulation(trace, Settings(speculation="layer_minus_1"))
    want = _whole_stream_steps(sim.stream, sim.costs)
    for chunk in (1, 5, 64, 1 << 16):
        got = timing_from_costs(sim.stream, sim.costs, 1, sim.gpu_dtype, sim.gpu_dtype, chunk=chunk).step_s
        assert got.dtype == np.float64 and got.tolist() == want, chunk
