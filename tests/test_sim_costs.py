"""Each cost term of simulator/costs.py against a computation done by hand with the profile's numbers."""

import numpy as np
import pytest

from pregate.simulator import costs as C
from pregate.simulator.hosts import builtin_hosts, load_host, with_host
from pregate.simulator.profile import load_profile
from pregate.simulator.runtime import load_runtime
from pregate.simulator.stream import build_stream
from pregate.simulator.synthetic import make_trace

P = load_profile("rtx3090")
DDR4 = with_host(P, "ddr4-3200-2ch")
RT = load_runtime("pregate-eager")
N = np.arange(5, dtype=np.float64)


def test_expert_gpu_roofline_by_hand():
    params, d, f, e_bytes = 3 * 64 * 128, 64, 128, 3 * 64 * 128 * 2
    got, used = C.expert_gpu_seconds(N, P, params, d, f, e_bytes, "bfloat16", kernels=4)
    n = 3
    want = max(2 * n * params / 71.0e12, (e_bytes + 2 * n * d * 2) / 936.0e9) + 4 * 4.0e-6
    assert used == "" and got[0] == 0.0 and got[n] == pytest.approx(want, rel=1e-12)


def test_expert_gpu_int4_reads_quantised_bytes():
    params = 3 * 4096 * 14336
    e_bytes = int(params * (0.5 + 2 / 64))
    got, _ = C.expert_gpu_seconds(N, P, params, 4096, 14336, e_bytes, "int4", kernels=4)
    assert got[1] == pytest.approx((e_bytes + 2 * 4096 * 2) / 936.0e9 + 16e-6, rel=1e-12)


def test_expert_cpu_bandwidth_bound_at_one_token():
    # Mixtral's expert in bf16 on dual-channel DDR4: the weights stream once from memory
    params, d = 3 * 4096 * 14336, 4096
    host_bytes = params * 2
    got = C.expert_cpu_seconds(N, DDR4, params, d, host_bytes, "bfloat16")
    act = 2 * (7.5e-6 + 1 * d * 4 / 25.0e9)
    assert got[1] == pytest.approx(host_bytes / 40.0e9 + act + 2.0e-5, rel=1e-12)


def test_expert_cpu_flop_bound_at_many_tokens():
    params, d, n = 3 * 4096 * 14336, 4096, 512
    host_bytes = params * 4
    got = C.expert_cpu_seconds(np.array([float(n)]), DDR4, params, d, host_bytes, "float32")
    flops = 2 * n * params / 0.7e12  # fp32 rate
    assert flops > host_bytes / 40.0e9
    assert got[0] == pytest.approx(flops + 2 * (7.5e-6 + n * d * 4 / 25.0e9) + 2.0e-5, rel=1e-12)


def test_expert_cpu_uses_reduced_precision_rate_and_profile_fallback():
    server = with_host(P, "server-ddr5-8ch")
    assert C.cpu_flops(server, "bfloat16") == 8.0e12 and C.cpu_flops(server, "float32") == 4.0e12
    # a profile's own [cpu] has no bf16 rate and no dispatch: fp32 rate and 0 s
    assert C.cpu_flops(P, "bfloat16") == P["cpu.flops"]
    got = C.expert_cpu_seconds(N, P, 1000, 8, 2000, "bfloat16")
    assert got[1] == pytest.approx(max(2000 / 50.0e9, 2 * 1000 / 1.0e12) + 2 * (7.5e-6 + 8 * 4 / 25.0e9), rel=1e-12)


def test_faster_host_computes_an_expert_sooner():
    params, d = 3 * 4096 * 14336, 4096
    times = {h: C.expert_cpu_seconds(N, with_host(P, h), params, d, params * 2, "bfloat16")[1] for h in builtin_hosts()}
    assert times["server-ddr5-8ch"] < times["ddr5-5600-2ch"] < times["ddr4-3200-2ch"]


def test_copy_seconds_by_tier_by_hand():
    got = C.copy_seconds({"bfloat16": 1_000_000}, P, "pinned")
    assert got["bfloat16"] == pytest.approx(7.5e-6 + 1e6 / 25.0e9, rel=1e-12)
    assert C.copy_seconds({"x": 10**6}, P, "pageable")["x"] == pytest.approx(7.5e-6 + 1e6 / 10.0e9, rel=1e-12)
    nvme = C.copy_seconds({"x": 10**6}, P, "nvme")["x"]
    assert nvme == pytest.approx(1e-4 + 1e6 / 7.0e9 + 7.5e-6 + 1e6 / 25.0e9, rel=1e-12)


def test_dequant_seconds_by_hand():
    got = C.dequant_seconds({"bfloat16": 10, "int4": 5}, RT, P, "bfloat16", 1_000_000)
    rate = C.dequant_rate(RT, P, "int4")
    assert got["bfloat16"] == 0.0
    assert got["int4"] == pytest.approx(1e6 / rate + 4.0e-6, rel=1e-12)


def test_expert_issue_resident_never_dearer():
    host, resident = C.expert_issue_seconds(RT, 4)
    assert resident <= host
    assert host == pytest.approx(RT.get("host.expert_issue") or RT["host.per_expert"] + 4 * RT["host.per_kernel"])


def test_attention_and_dense_roofline_by_hand():
    ctx = np.array([0.0, 1000.0])
    att = C.attention_seconds(ctx, P, 4096, "bfloat16")
    assert att[1] == pytest.approx(max(4 * 1000 * 4096 / 71.0e12, 2 * 1000 * 4096 * 2 / 936.0e9), rel=1e-12)


def test_blocks_per_moe_layer_counts_blocks():
    from pregate.traces import StackMeta

    from conftest import make_meta

    meta = make_meta(stacks={"decoder": StackMeta(moe_layers=2, experts=8, top_k=1, block_indices=[1, 3])})
    assert C.blocks_per_moe_layer(meta, 2) == (2.0, 4)  # blocks 0..3 priced at two MoE layer steps


def test_build_costs_assembles_the_terms(tmp_path):
    from pregate.traces import open_trace

    path = make_trace(tmp_path / "t", layers=4, experts=8, top_k=2, seqs=2)
    stream = build_stream(open_trace(path), batch_size=1)
    tables = C.build_costs(stream, DDR4, RT)
    meta = stream.meta
    n = np.arange(len(tables.expert_cpu), dtype=np.float64)
    want = C.expert_cpu_seconds(n, DDR4, meta.expert_params, meta.d_model, tables.expert_bytes[tables.gpu_dtype],
                                tables.gpu_dtype)
    assert tables.expert_cpu == want.tolist()
    assert tables.host == "ddr4-3200-2ch"
    assert tables.copy == C.copy_seconds(tables.expert_bytes, DDR4, "pinned")
    # the CPU reads the host copy: an int4 copy is cheaper to stream than the GPU dtype's
    if "int4" in tables.expert_cpu_by_dtype:
        int4 = tables.for_host_copy("int4")
        assert int4.expert_cpu[1] < tables.expert_cpu[1]


def test_host_kinds_load_with_provenance_and_ranges():
    for name in builtin_hosts():
        host = load_host(name)
        assert {"cpu.memory_bandwidth", "cpu.flops", "cpu.bf16_flops", "cpu.threads", "cpu.dispatch"} <= set(host.entries)
        for key, v in host.entries.items():
            assert v.source and v.low <= v.value <= v.high, key
            assert v.kind in ("derived", "estimate", "measured", "datasheet")
    assert with_host(DDR4, "ddr4-3200-2ch") == DDR4  # applying twice changes nothing


def test_host_file_errors_are_one_line(tmp_path):
    from pregate.simulator.errors import ProfileError, SimulatorError

    bad = tmp_path / "h.toml"
    bad.write_text('schema = "pregate.host/1"\nname = "x"\n[cpu]\nflops = { value = 1e12, unit = "FLOP/s", '
                   'kind = "estimate", source = "guess" }\n')
    with pytest.raises(ProfileError, match="is an estimate: it needs low and high"):
        load_host(str(bad))
    with pytest.raises(SimulatorError, match="unknown host kind 'ddr9'"):
        load_host("ddr9")
