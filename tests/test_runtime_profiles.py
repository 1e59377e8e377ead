"""Hardware and runtime profiles: typed values with provenance, checked against their sources."""

import json
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from pregate.simulator.costs import build_costs, dense_block_kernels
from pregate.simulator.errors import ProfileError
from pregate.simulator.profile import builtin_profiles, load_profile
from pregate.simulator.provenance import KINDS, NEEDS_RANGE
from pregate.simulator.runtime import builtin_runtimes, load_runtime

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "bench" / "results" / "gpu-validate-nvidia-h200.json"


def test_every_shipped_value_is_typed_with_a_range_where_needed():
    for name in builtin_profiles():
        p = load_profile(name)
        assert p.schema == "pregate.profile/2" and not p.legacy
        for key, v in p.entries.items():
            assert v.kind in KINDS and v.source.strip(), (name, key)
            assert v.low <= v.value <= v.high
            if v.kind in NEEDS_RANGE:
                assert v.source.lower().startswith(("estimate", "derived")), (name, key, v.source)
            if v.kind == "datasheet":
                assert "datasheet" in v.source.lower() or "specification" in v.source.lower(), (name, key)
            if v.kind == "measured":
                assert "measured" in v.source.lower(), (name, key)
    for name in builtin_runtimes():
        r = load_runtime(name)
        assert r.host_rule
        for key, v in r.entries.items():
            assert v.kind in KINDS and v.low <= v.value <= v.high, (name, key)


def test_rtx3090_values_named_in_its_fix():
    p = load_profile("rtx3090")
    assert p["gpu.memory"] == 24 * 2**30
    latency = p.entries["pcie.copy_latency"]
    assert latency.kind == "estimate" and latency.low <= 5.02e-6 <= latency.high  # the H200 measurement is inside
    rt = load_runtime("pregate-eager")
    # dequantisation is the runtime's, as a share of HBM: int4 on the 3090 is the H200's share of its HBM
    from pregate.simulator.costs import dequant_rate

    h200 = load_profile("h200")
    record = json.loads(RECORD.read_text())
    measured_int4 = record["calibration"]["dequant_Bps"]["int4"]
    assert dequant_rate(rt, h200, "int4") == pytest.approx(measured_int4, rel=1e-3)
    assert dequant_rate(rt, p, "int4") == pytest.approx(measured_int4 * 936e9 / h200["gpu.hbm_bandwidth"], rel=1e-3)
    assert dequant_rate(rt, p, "int4") < 234e9 / 3


def test_h200_measured_values_equal_the_record():
    """Every measured value of h200.toml is the record's calibration (the run it came from)."""
    record = json.loads(RECORD.read_text())
    calibrated = record["calibration"]["values"]
    p = load_profile("h200")
    for key, v in p.entries.items():
        if v.kind == "measured":
            assert v.value == pytest.approx(calibrated[key]["value"], rel=1e-5), key
    for t in p.dense_tables:
        assert any(t.seconds == pytest.approx(r["seconds"], rel=1e-5) for r in record["calibration"]["dense_tables"])


def test_h200_kernel_gap_is_derived_from_its_dense_tables():
    """(measured block - roofline) / kernels over the tables: the median is the value, min-max the range."""
    p, rt = load_profile("h200"), load_runtime("pregate-eager")
    peak, hbm = p["gpu.bf16_flops"], p["gpu.hbm_bandwidth"]
    gaps = []
    for t in p.dense_tables:
        k = dense_block_kernels(rt, t.d_model, t.block_params)
        for tok, sec in zip(t.tokens, t.seconds):
            if tok <= 16:
                ctx = tok * t.context
                roof = max(2 * tok * t.block_params / peak, 2 * t.block_params / hbm) + max(
                    4 * ctx * t.d_model / peak, 4 * ctx * t.d_model / hbm)
                gaps.append((sec - roof) / k)
    v = p.entries["gpu.kernel_launch"]
    assert v.kind == "derived"
    assert v.value == pytest.approx(np.median(gaps), rel=0.01)
    assert v.low == pytest.approx(min(gaps), rel=0.01) and v.high == pytest.approx(max(gaps), rel=0.01)


@pytest.mark.slow
def test_unmeasured_dense_shape_fallback_agrees_with_h200_tables(tmp_path):
    """Without its tables the roofline plus the runtime's kernels prices each H200 shape within 20%."""
    from pregate.executor.shapes import make_shape_trace
    from pregate.simulator.stream import build_stream
    from pregate.traces import open_trace

    p, rt = load_profile("h200"), load_runtime("pregate-eager")
    bare = type(p)(**{**p.__dict__, "dense_tables": ()})
    for name in ("switch-base-8", "mixtral-like"):
        trace = open_trace(make_shape_trace(tmp_path / name, name, seqs=2, prompt_len=4, new_tokens=4,
                                            dtype="bfloat16"))
        stream = build_stream(trace, batch_size=1)
        measured = build_costs(stream, p, rt, "bfloat16")
        fallback = build_costs(stream, bare, rt, "bfloat16")
        assert measured.used_dense_table and not fallback.used_dense_table
        decode = [i for i in range(stream.n_layer_steps) if stream.pass_decode[stream.ls_pass[i]]]
        ratio = np.array(fallback.dense_gpu)[decode] / np.array(measured.dense_gpu)[decode]
        assert np.all(np.abs(ratio - 1) <= 0.20), (name, ratio.min(), ratio.max())


def test_pregate_eager_is_what_the_record_derives():
    """The shipped pregate-eager.toml is bench/derive_runtime.py's output for the H200 record, byte for byte."""
    shipped = (resources.files("pregate.simulator") / "runtimes" / "pregate-eager.toml").read_text()
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "derive_runtime.py"), str(RECORD)],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out == shipped


@pytest.mark.slow
def test_executor_kernel_counts_are_counted():
    """The kernels per block and expert the runtime profiles use are what the executor's code dispatches."""
    import torch
    import torch.nn.functional as F
    from torch.utils._python_dispatch import TorchDispatchMode

    from pregate.executor.calibrate import EXECUTOR_KERNELS
    from pregate.executor.shapes import shape_meta
    from pregate.executor.store import gated_spec, switch_spec
    from pregate.executor.synthetic import SyntheticModel

    views = {"view", "unbind", "transpose", "unsqueeze", "squeeze", "reshape", "_reshape_alias", "expand",
             "select", "slice", "alias", "t", "as_strided", "detach", "_unsafe_view", "split"}

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += func.__name__.split(".")[0] not in views
            return func(*args, **(kwargs or {}))

    def count(fn):
        with Count() as c:
            fn()
        return c.n

    for name, kernels in (("mixtral-like", EXECUTOR_KERNELS["dense_block"][0]),
                          ("switch-base-8", 2 * (EXECUTOR_KERNELS["dense_block"][0] + EXECUTOR_KERNELS["dense_ffn"][0]))):
        m = SyntheticModel(shape_meta(name), torch.device("cpu"), torch.float32, 2, 16)
        x = m.start(1)
        assert count(lambda: m.dense(0, x, True, 8)) == kernels, name
    for spec, key in ((switch_spec(16, 32, F.relu), "expert"), (gated_spec(16, 32, F.silu), "gated_expert")):
        w, x, i = spec.views(torch.randn(spec.numel)), torch.randn(4, 16), torch.arange(2)
        out, g = torch.zeros(4, 16), torch.full((4, 1), 0.5)
        assert count(lambda: out.index_add_(0, i, spec.compute(x.index_select(0, i), w) * g[:2])) == \
            EXECUTOR_KERNELS[key][0]
    rt = load_runtime("pregate-eager")
    for key, (n, _) in EXECUTOR_KERNELS.items():
        assert rt[f"kernels.{key}"] == n


def test_legacy_calibrated_profile_loads_and_prices_as_before(tmp_path):
    """A schema /1 file (calibrate before the split) loads; its host costs are its runtime; --convert is exact."""
    from pregate.executor.calibrate import convert_profile
    from pregate.simulator import Settings, Simulation
    from pregate.simulator.synthetic import make_trace

    record = json.loads(RECORD.read_text())
    old = tmp_path / "old.toml"
    old.write_text(record["profile_toml"])
    legacy = load_profile(old)
    assert legacy.schema == "pregate.profile/1" and "host.block_issue" in legacy.legacy
    trace = make_trace(tmp_path / "t", seqs=2, prompt_len=3, new_tokens=4, layers=3)
    a = Simulation(trace, Settings(profile=str(old), cache="50%")).run(bounds=False).summary
    assert a["runtime"] == "calibrated-nvidia-h200 (runtime from the profile file)"
    new, runtime = convert_profile(old, tmp_path / "new.toml")
    assert tomllib.loads(new.read_text())["schema"] == "pregate.profile/2"
    b = Simulation(trace, Settings(profile=str(new), runtime=str(runtime), cache="50%")).run(bounds=False).summary
    assert b["mean_step_latency_s"] == pytest.approx(a["mean_step_latency_s"], rel=1e-9)


def test_results_name_both_profiles_and_runtimes_differ(tmp_path):
    from pregate.simulator import Settings, Simulation
    from pregate.simulator.synthetic import make_trace

    trace = make_trace(tmp_path / "t", seqs=2, prompt_len=3, new_tokens=4, layers=3)
    eager = Simulation(trace, Settings(runtime="pregate-eager")).run(bounds=False).summary
    bound = Simulation(trace, Settings(runtime="gpu-bound")).run(bounds=False).summary
    assert (eager["profile"], eager["runtime"]) == ("rtx3090", "pregate-eager")
    assert bound["runtime"] == "gpu-bound" and bound["dispatch_s"] < eager["dispatch_s"]
    assert bound["mean_step_latency_s"] < eager["mean_step_latency_s"]


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.replace("per_kernel = ", "per_kernal = "), "unknown key 'host.per_kernal'"),
    (lambda t: "\n".join(x for x in t.splitlines() if not x.startswith("router_sync")),
     "missing key 'host.router_sync'"),
    (lambda t: t.replace('issue = "all-at-once"', 'issue = "sometimes"'), "unknown 'copies.issue'"),
    (lambda t: t.replace('kind = "derived", low = 5.222e-06, high = 2.435e-05,', 'kind = "derived",'),
     "'host.per_kernel' is a derived: it needs low and high"),
    (lambda t: t.replace('host_rule = ', 'host_rules = '), "unknown key 'host_rules'"),
])
def test_malformed_runtime_names_the_key(tmp_path, edit, message):
    text = (resources.files("pregate.simulator") / "runtimes" / "pregate-eager.toml").read_text()
    path = tmp_path / "rt.toml"
    path.write_text(edit(text))
    with pytest.raises(ProfileError, match=message.replace("(", r"\(")):
        load_runtime(path)


def test_cli_runtime_flag_and_bad_name(tmp_path, capsys):
    from pregate.cli import main
    from pregate.simulator.synthetic import make_trace

    trace = make_trace(tmp_path / "t", seqs=2, prompt_len=3, new_tokens=4, layers=3)
    out = tmp_path / "r.json"
    assert main(["simulate", str(trace), "--profile", "rtx3090", "--runtime", "gpu-bound", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["profile"] == "rtx3090" and data["runtime"] == "gpu-bound"
    capsys.readouterr()
    assert main(["simulate", str(trace), "--runtime", "pregate-eagr"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean 'pregate-eager'" in err


def test_cpu_runtime_adds_host_time_and_blocks_on_copies(tmp_path):
    """host_is_device: a block or an expert costs compute plus host time, and copies block the host."""
    import dataclasses

    from pregate.simulator import Settings, Simulation
    from pregate.simulator.synthetic import make_trace

    trace = make_trace(tmp_path / "t", seqs=2, prompt_len=3, new_tokens=4, layers=3)
    eager = Simulation(trace, Settings(cache="25%"))
    serial = Simulation(trace, Settings(cache="25%"), runtime=dataclasses.replace(eager.runtime, host_is_device=True))
    c, s = eager.costs, serial.costs
    assert s.expert_host == 0 and s.expert_gpu[1] == pytest.approx(c.expert_gpu[1] + c.expert_host)
    assert not any(s.dense_host)
    assert s.dense_gpu[0] == pytest.approx(c.dense_gpu[0] + c.dense_host[0])
    copy = c.copy[c.gpu_dtype]
    assert s.copy[s.gpu_dtype] == 0 and s.for_policy("lru").copy_issue == pytest.approx(
        c.for_policy("lru").copy_issue + copy)
    assert serial.timed()[0].stall_s == 0.0


def test_reference_loop_makes_the_simulators_decisions(tmp_path):
    """The independent loop's own LRU and oracle prefetch give the simulator's hits and misses exactly.

    (With a cache of 3 for top-1 routing the loop issues a few more prefetches than the simulator,
    which skips a prefetch whose slot it would have to take from another prefetch of the same step.)
    """
    import importlib.util

    from pregate.simulator.stream import build_stream
    from pregate.simulator.synthetic import make_trace
    from pregate.traces import open_trace

    spec = importlib.util.spec_from_file_location("reference_loop", ROOT / "bench" / "reference_loop.py")
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    trace = open_trace(make_trace(tmp_path / "t", seqs=3, prompt_len=3, new_tokens=5, layers=3, seed=4))
    hw, rt = load_profile("rtx3090"), load_runtime("pregate-eager")
    # the loop's hits and misses follow the stream alone; 64-wide weights (as the bench's own fit uses) instead
    # of the trace's 768x3072 experts, whose 450 MB host store took most of this test's 13-37 s
    import dataclasses

    small = dataclasses.replace(trace.meta, d_model=64, d_ff=128, expert_params=2 * 64 * 128,
                                dense_bytes_per_layer=2 * 64 * 256 * 4, dtype="float32")
    for batch, cap, pre in ((1, 6, False), (2, 8, True), (1, 3, True)):
        stream = build_stream(trace, batch_size=batch)
        loop = ref.Loop(small, stream.layout, cap, 1)
        got = ref.run(loop, stream, pre)["counts"]
        _, counts = ref.predict(stream, hw, rt, cap, pre)
        assert (got["hits"], got["misses"]) == (counts.hits, counts.misses), (batch, cap, pre)
        if cap > 3:
            assert got["prefetches"] == counts.prefetches
