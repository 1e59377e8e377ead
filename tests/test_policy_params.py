"""Policy parameters: declared on the class, set as --policy-arg or sweep keys, refused in one line when wrong."""

from __future__ import annotations

import inspect
import json

import pytest

from pregate.cli import main
from pregate.simulator import Settings, simulate
from pregate.simulator.errors import SimulatorError
from pregate.simulator.policies import CACHING, SPECULATION
from pregate.simulator.policies.build import caching_factory, make_speculation
from pregate.simulator.policies.registry import FAMILIES, params_of
from pregate.simulator.replay import FAST_LOOPS
from pregate.simulator.stream import build_stream
from pregate.simulator.sweep import SweepSpec, plan_sweep, read_results, run_sweep, spec_from_mapping
from pregate.simulator.synthetic import make_trace
from pregate.traces import open_trace

EVERY = [cls for registry in FAMILIES.values() for cls in registry.classes()]


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    return make_trace(tmp_path_factory.mktemp("params") / "t", seqs=3, prompt_len=3, new_tokens=10, layers=4,
                      experts=8, top_k=2, ahead=3, seed=5)


@pytest.mark.parametrize("cls", EVERY, ids=lambda c: f"{c.family}-{c.name}")
def test_every_parameter_reaches_the_constructor_with_the_same_default(cls):
    signature = inspect.signature(cls.__init__).parameters
    for f in params_of(cls):
        assert f.name in signature, f"{cls.name}.{f.name} is not a constructor keyword"
        assert signature[f.name].default == f.default, f"{cls.name}.{f.name}: default differs from the constructor's"
        assert f.metadata["help"], f"{cls.name}.{f.name} has no help"


@pytest.mark.parametrize("cls", CACHING.classes(), ids=lambda c: c.name)
def test_fast_replay_names_a_loop_replay_has(cls):
    assert cls.fast_replay is None or cls.fast_replay in FAST_LOOPS


def test_fast_loops_are_not_inherited():
    # lfu-decay, least-stale and pinned-hot are LFU subclasses with other orderings: the LFU loop is wrong for them
    assert CACHING.get("lfu").fast_replay == "lfu"
    assert all(CACHING.get(n).fast_replay is None for n in ("lfu-decay", "least-stale", "pinned-hot"))


def test_names_resolve_bare_or_qualified_to_one_form():
    a = Settings(speculation="multi_layer", policy_args=["decay=0.25"])
    b = Settings(speculation="multi_layer", policy_args={"multi_layer.decay": "0.25"})
    c = Settings(speculation="multi_layer", policy_args=[("decay", 0.25)])
    assert a == b == c and a.policy_args == (("multi_layer.decay", 0.25),)
    assert a.to_dict()["policy_args"] == {"multi_layer.decay": 0.25}
    assert "policy_args" not in Settings().to_dict()  # results without parameters keep their keys


@pytest.mark.parametrize("args, words", [
    (["nope=1"], ["unknown parameter 'nope'", "multi_layer.decay"]),
    (["depth=2"], ["oracle.depth", "not among the chosen"]),
    (["oracle.depth=2"], ["'oracle' is not among the chosen"]),
    (["decay=fast"], ["takes a float", "'fast'"]),
    (["decay=1.5"], ["outside 0.0 to 1.0"]),
    (["decay"], ["not NAME=VALUE"]),
    (["decay=0.1", "multi_layer.decay=0.2"], ["given twice"]),
    (["half_life=8.5", "decay=0.1"], ["lfu-decay.half_life", "not among the chosen"]),
])
def test_bad_parameters_are_refused_naming_the_valid_ones(args, words):
    with pytest.raises(SimulatorError) as info:
        Settings(speculation="multi_layer", policy_args=args)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_ambiguous_bare_name_is_refused(monkeypatch):
    # two chosen policies with a parameter of the same name: the bare name must be qualified
    from dataclasses import dataclass

    from pregate.simulator.policies.registry import param

    @dataclass(frozen=True)
    class Params:
        decay: float = param(0.5, "a second decay", low=0.0)

    monkeypatch.setattr(CACHING.get("lfu-decay"), "Params", Params)
    with pytest.raises(SimulatorError, match="ambiguous.*multi_layer.decay.*lfu-decay.decay|ambiguous"):
        Settings(speculation="multi_layer", cache_policy="lfu-decay", policy_args=["decay=0.3"])


def test_replace_drops_the_parameters_of_a_policy_swapped_out():
    s = Settings(speculation="multi_layer", cache_policy="lfu-decay", policy_args=["decay=0.3", "half_life=16"])
    assert s.replace(speculation="none").policy_args == (("lfu-decay.half_life", 16.0),)
    assert s.replace(cache="10%").policy_args == s.policy_args


def test_parameters_reach_the_policy_objects(trace):
    layout = build_stream(open_trace(trace)).layout
    s = Settings(speculation="oracle", cache_policy="s3fifo", policy_args=["depth=1", "to_main=3"])
    assert make_speculation(SPECULATION.get("oracle"), layout, s).depth == 1
    assert caching_factory(CACHING.get("s3fifo"), layout, s)().to_main == 3


def test_a_parameter_changes_the_result_and_the_references_do_not(trace):
    # ungated: on this small trace the cost gate lets almost no copy through at either depth
    one = simulate(trace, Settings(speculation="oracle", cache="40%", prefetch_gate="off",
                                   policy_args=["depth=1"])).summary
    three = simulate(trace, Settings(speculation="oracle", cache="40%", prefetch_gate="off")).summary
    # the same experts are copied either way; depth 3 copies them earlier, so fewer steps wait
    assert one["mean_step_latency_s"] > three["mean_step_latency_s"]
    # the references are fixed points: they do not move with a policy's parameters
    assert one["bound_oracle_mean_step_latency_s"] == three["bound_oracle_mean_step_latency_s"]


def test_simulate_cli_takes_and_refuses_policy_args(trace, tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["simulate", str(trace), "--speculation", "oracle", "--policy-arg", "oracle.depth=1", "--no-bounds",
                 "--json", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["settings"]["policy_args"] == {"oracle.depth": 1}
    capsys.readouterr()
    assert main(["simulate", str(trace), "--policy-arg", "depth=two"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "oracle.depth" in err[0] and "Traceback" not in err[0]


def test_sweep_keys_in_every_spelling_multiply_only_their_policy(trace, tmp_path):
    spec = spec_from_mapping({"trace": str(trace), "speculation": ["none", "multi_layer"],
                              "cache_policy": ["lru", "lfu-decay"], "cache": "25%",
                              "multi_layer.decay": [0.25, 0.5], "lfu-decay": {"half_life": [24, 96]}})
    settings = spec.settings()
    # none+lru 1, none+lfu-decay 2, multi_layer+lru 2, multi_layer+lfu-decay 4
    assert len(settings) == 9
    assert {s.policy_args for s in settings if s.speculation == "none" and s.cache_policy == "lru"} == {()}
    bare = spec_from_mapping({"trace": str(trace), "speculation": "multi_layer", "decay": [0.25, 0.5]})
    table = spec_from_mapping({"trace": str(trace), "speculation": "multi_layer",
                               "policy_args": {"decay": [0.25, 0.5]}})
    assert bare.settings() == table.settings() == [
        Settings(speculation="multi_layer", policy_args={"multi_layer.decay": v}) for v in (0.25, 0.5)]
    plan = plan_sweep(bare)
    run_sweep(plan, tmp_path / "res", workers=1, progress=False)
    frame = read_results(tmp_path / "res")
    assert sorted(frame["policy_args"].to_list()) == ['{"multi_layer.decay": 0.25}', '{"multi_layer.decay": 0.5}']


@pytest.mark.parametrize("data, words", [
    ({"speculation": "none", "decay": [0.5]}, ["multi_layer.decay", "not among the chosen"]),
    ({"speculation": "multi_layer", "decay": ["x"]}, ["takes a float"]),
    ({"speculation": "multi_layer", "decay": []}, ["no values"]),
    ({"speculation": "multi_layer", "decai": [0.5]}, ["unknown key 'decai'", "did you mean 'decay'"]),
])
def test_sweep_refuses_bad_parameter_keys(trace, data, words):
    from pregate.simulator.sweep import SweepError

    with pytest.raises(SweepError) as info:
        plan_sweep(spec_from_mapping({"trace": str(trace), **data}, where="grid.toml"))
    for word in words:
        assert word in str(info.value)


def test_without_parameters_a_point_keeps_its_key(trace):
    # the settings JSON hashed into a point's key is what it was before policy parameters existed
    from pregate.simulator.sweep import point_key

    s = Settings()
    assert "policy_args" not in s.to_dict()
    assert point_key("t", "p", s) == point_key("t", "p", Settings(policy_args=()))
    assert point_key("t", "p", s) != point_key("t", "p", Settings(speculation="oracle", policy_args=["depth=1"]))


def test_recommend_applies_policy_args_to_the_candidates_that_have_them(tmp_path, capsys):
    from pregate.simulator.recommend import recommend

    t = make_trace(tmp_path / "t", seqs=2, prompt_len=4, new_tokens=6, layers=3, experts=8, top_k=1)
    recommend(str(t), "rtx3090", vram_gb=0.6, margin_gb=0.1, workers=1, results=tmp_path / "res",
              policy_args=["half_life=16"])
    frame = read_results(tmp_path / "res")
    decayed = frame.filter(frame["cache_policy"] == "lfu-decay")["policy_args"].to_list()
    others = frame.filter(frame["cache_policy"] != "lfu-decay")["policy_args"].to_list()
    assert decayed and set(decayed) == {'{"lfu-decay.half_life": 16.0}'}
    assert set(others) == {None}
    assert main(["recommend", "--model", str(t), "--vram", "0.6", "--margin", "0.1", "--workers", "1",
                 "--policy-arg", "to_main=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "s3fifo.to_main" in err[0]


def test_validate_applies_each_parameter_to_the_pairs_that_have_it():
    pytest.importorskip("torch")
    from pregate.executor.device import ExecutorError
    from pregate.executor.validate import for_pair, resolve_pair_args

    resolved = resolve_pair_args(["decay=0.3", "to_main=3"], [("multi_layer", "lru"), ("none", "s3fifo")])
    assert for_pair(resolved, "multi_layer", "lru") == (("multi_layer.decay", 0.3),)
    assert for_pair(resolved, "none", "s3fifo") == (("s3fifo.to_main", 3),)
    assert for_pair(resolved, "none", "lru") == ()
    with pytest.raises(ExecutorError, match="oracle.depth"):
        resolve_pair_args(["depth=2"], [("none", "lru")])
