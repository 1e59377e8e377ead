"""Hardware profiles, cache sizes and the command line's one-line errors."""

import json
import tomllib
from importlib import resources

import pytest

from pregate.cli import main
from pregate.simulator.errors import ProfileError, SimulatorError
from pregate.simulator.profile import builtin_profiles, load_profile, profile_for_device
from pregate.simulator.settings import parse_cache_size
from pregate.simulator.synthetic import make_trace

EXPECTED = {"rtx3090", "rtx4090", "rtx3060-12gb", "t4", "a100-80gb-pcie", "h100-pcie", "h200"}


def test_builtin_profiles_load_with_units_and_sources():
    assert EXPECTED <= set(builtin_profiles())
    for name in builtin_profiles():
        p = load_profile(name)
        assert p.values and all(p.sources[k] for k in p.values)
        assert p["pcie.pinned_bandwidth"] > p["pcie.pageable_bandwidth"]


@pytest.mark.parametrize("device,profile", [("NVIDIA GeForce RTX 3090", "rtx3090"), ("Tesla T4", "t4"),
                                            ("NVIDIA H200", "h200"), ("NVIDIA A100 80GB PCIe", "a100-80gb-pcie"),
                                            ("NVIDIA GeForce RTX 4090", "rtx4090")])
def test_device_name_maps_to_profile(device, profile):
    assert profile_for_device(device) == profile


def test_unknown_device_is_one_line_error():
    with pytest.raises(ProfileError, match="no built-in profile for CUDA device"):
        profile_for_device("Imaginary GPU 9000")


def _write_profile(tmp_path, edit):
    text = (resources.files("pregate.simulator") / "profiles" / "rtx3090.toml").read_text()
    path = tmp_path / "bad.toml"
    path.write_text(edit(text))
    return path


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.replace("value = 25.0e9", "value = -25.0e9"), "'pcie.pinned_bandwidth' must be a positive number"),
    (lambda t: t + "\n[extra]\nfoo = 1\n", "unknown key 'extra'"),
    (lambda t: t.replace("[cpu]", "[cpu]\nturbo = { value = 1, unit = \"s\", source = \"x\" }"), "unknown key 'cpu.turbo'"),
    (lambda t: t.replace('pinned_bandwidth = { value = 25.0e9, unit = "B/s"', 'pinned_bandwidth = { value = 25.0e9, unit = "GB/s"'),
     "'pcie.pinned_bandwidth' must have unit \"B/s\""),
    (lambda t: "\n".join(line for line in t.splitlines() if not line.startswith("pinned_bandwidth")),
     "missing key 'pcie.pinned_bandwidth'"),
    (lambda t: t.replace('kind = "estimate", low = 20.0e9, high = 26.5e9', 'kind = "estimate"'),
     "'pcie.pinned_bandwidth' is an estimate: it needs low and high"),
    (lambda t: t.replace('low = 20.0e9, high = 26.5e9', 'low = 26.0e9, high = 26.5e9'),
     "'pcie.pinned_bandwidth' must have low <= value <= high"),
    (lambda t: t.replace('kind = "datasheet"', 'kind = "guess"', 1), "'gpu.memory' needs kind = one of measured"),
    (lambda t: t + "\n[host]\nrouter_sync = { value = 1e-5, unit = \"s\", kind = \"measured\", source = \"x\" }\n",
     "unknown key 'host'"),
])
def test_malformed_profile_names_the_key(tmp_path, edit, message):
    path = _write_profile(tmp_path, edit)
    with pytest.raises(ProfileError, match=message.replace("(", r"\(")):
        load_profile(path)


def test_profile_file_round_trip(tmp_path):
    path = _write_profile(tmp_path, lambda t: t.replace('name = "rtx3090"', 'name = "my-gpu"'))
    assert load_profile(str(path)).name == "my-gpu"
    assert tomllib.loads(path.read_text())["schema"] == "pregate.profile/2"


@pytest.mark.parametrize("text,expected", [("96", 96), ("25%", 24), ("100%", 96), (10, 10), ("1GB", 10), ("0", 0)])
def test_cache_size_forms(text, expected):
    assert parse_cache_size(text, total_experts=96, expert_bytes=100_000_000) == expected


@pytest.mark.parametrize("text", ["lots", "12 parsecs", "150%", "2.5"])
def test_bad_cache_size(text):
    with pytest.raises(SimulatorError):
        parse_cache_size(text, 96, 1000)


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    return make_trace(tmp_path_factory.mktemp("t") / "c", seqs=2, prompt_len=2, new_tokens=4, seed=1)


def test_cli_help_lists_settings(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--cache-policy" in out and "25%" in out and "--per-layer" in out


def test_cli_runs_and_writes_json(trace, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["simulate", str(trace), "--speculation", "layer_minus_1", "--cache", "25%", "--json", str(out)]) == 0
    assert "step latency" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["settings"]["speculation"] == "layer_minus_1" and data["misses"] >= 0


@pytest.mark.parametrize("args,message", [
    (["--cache-policy", "lruu"], "unknown caching policy 'lruu'"),
    (["--speculation", "orcale"], "did you mean 'oracle'"),
    (["--profile", "rtx9090"], "unknown profile 'rtx9090'"),
    (["--cache", "many"], "cache size 'many'"),
])
def test_cli_bad_input_one_line(trace, capsys, args, message):
    assert main(["simulate", str(trace), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err


def test_cli_malformed_profile_file(trace, tmp_path, capsys):
    path = _write_profile(tmp_path, lambda t: t.replace("value = 25.0e9", "value = -1"))
    assert main(["simulate", str(trace), "--profile", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "positive number" in err


def test_cli_invalid_trace(tmp_path, capsys):
    import polars as pl
    import pyarrow.parquet as pq

    path = make_trace(tmp_path / "bad", seqs=1, new_tokens=2)
    part = next(path.glob("part-*.parquet"))
    table = pq.read_table(part)
    frame = pl.from_arrow(table).with_columns(pl.col("layer") + 50)
    pq.write_table(frame.to_arrow().cast(table.schema).replace_schema_metadata(table.schema.metadata), part)
    assert main(["simulate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "layer" in err


DENSE_TABLES = """
[[dense_table]]
d_model = 768
block_params = 2359296
dtype = "float32"
context = 64
tokens = [1, 8]
seconds = [1e-4, 3e-4]
source = "test"

[[dense_table]]
d_model = 768
block_params = 2359296
dtype = "float32"
context = 512
tokens = [1, 8]
seconds = [2e-4, 7e-4]
source = "test"
"""


def test_measured_dense_tables_price_dense_work(tmp_path):
    """A dense-block table at two contexts replaces the roofline: the line through them, per block."""
    import numpy as np

    from pregate.simulator import Settings, Simulation

    profile = _write_profile(tmp_path, lambda t: t + DENSE_TABLES)
    assert len(load_profile(profile).dense_tables) == 2
    trace = make_trace(tmp_path / "t", seqs=2, prompt_len=3, new_tokens=4, layers=3)
    sim = Simulation(trace, Settings(profile=str(profile), batch_size=2))
    stream, costs = sim.stream, sim.costs
    assert costs.used_dense_table == "test"
    for ls in range(stream.n_layer_steps):
        if not stream.pass_decode[stream.ls_pass[ls]]:
            continue
        T, ctx = stream.ls_tokens[ls], stream.ls_ctx[ls]
        short = np.interp(T, [1, 8], [1e-4, 3e-4])
        long = np.interp(T, [1, 8], [2e-4, 7e-4])
        expected = 2 * (short + (long - short) * (ctx / T - 64) / (512 - 64))  # two blocks per MoE layer
        assert costs.dense_gpu[ls] == pytest.approx(max(expected, 2 * 0.5 * short))
        rt = sim.runtime  # the host's issue: the runtime's per block plus its kernels (4 d^2 weights: no FFN)
        issue = rt["host.per_block"] + rt["kernels.dense_block"] * rt["host.per_kernel"]
        assert costs.dense_host[ls] == pytest.approx(2 * issue)
    # without the tables the roofline prices it, and differently
    plain = Simulation(trace, Settings(batch_size=2))
    assert plain.costs.used_dense_table == "" and plain.costs.dense_gpu != costs.dense_gpu
    # a runtime's measured issue time for this block shape is the host's part, per block
    runtime = tmp_path / "rt.toml"
    runtime.write_text((resources.files("pregate.simulator") / "runtimes" / "pregate-eager.toml").read_text()
                       + '\n[[block_issue]]\nd_model = 768\nblock_params = 2359296\nseconds = 2.5e-4\nsource = "test"\n')
    timed = Simulation(trace, Settings(profile=str(profile), runtime=str(runtime), batch_size=2))
    assert timed.costs.dense_gpu == costs.dense_gpu
    assert timed.costs.dense_host == pytest.approx([2 * 2.5e-4] * stream.n_layer_steps)


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.replace("context = 64", "context = -1"), "'dense_table\\[0\\].context' must be a non-negative integer"),
    (lambda t: t.replace("block_params = 2359296\ndtype", "dtype", 1), "'dense_table\\[0\\]' lacks block_params"),
    (lambda t: t.replace('source = "test"', 'issue_seconds = 1.0\nsource = "test"', 1),
     "'dense_table\\[0\\]' has unknown key\\(s\\) issue_seconds"),
])
def test_malformed_dense_table(tmp_path, edit, message):
    path = _write_profile(tmp_path, lambda t: edit(t + DENSE_TABLES))
    with pytest.raises(ProfileError, match=message):
        load_profile(path)
