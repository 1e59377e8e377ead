"""Every listing of policies is generated from the registries or checked against them; a new policy is one file."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from pregate.cli import main
from pregate.simulator.policies import BUFFERING, CACHING, COMPRESSION, SPECULATION
from pregate.simulator.policies.listing import parameter_table, policy_listing
from pregate.simulator.policies.registry import FAMILIES

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = Path(__file__).parent / "examples" / "lifo_policy.py"
ALL_NAMES = {name for registry in FAMILIES.values() for name in registry.names()}


def _ticked(text: str) -> set[str]:
    return set(re.findall(r"`([^`\s]+)`", text))


def _row(text: str, family: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {family} |"))


@pytest.mark.parametrize("family, registry", [("speculation", SPECULATION), ("caching", CACHING),
                                              ("buffering", BUFFERING), ("compression", COMPRESSION)])
def test_simulator_readme_policy_table_lists_every_registered_policy(family, registry):
    row = _row((ROOT / "simulator" / "README.md").read_text(), family)
    # every name-like token in the row (the trace column `ahead` aside) must be a registered policy
    named = {t for t in _ticked(row) if re.fullmatch(r"[a-z0-9_-]+", t)} - {"ahead"}
    assert set(registry.names()) <= _ticked(row), f"missing from the {family} row"
    assert named <= ALL_NAMES, f"the {family} row names unregistered policies: {named - ALL_NAMES}"


def test_simulator_readme_parameter_table_is_the_generated_one():
    assert parameter_table() in (ROOT / "simulator" / "README.md").read_text()


def test_top_readme_policy_bullet_lists_every_registered_policy():
    text = (ROOT / "README.md").read_text()
    bullet = text[text.index("- **Policies**"):].split("\n- ")[0]
    for name in ALL_NAMES:
        assert f"`{name}`" in bullet, f"README.md's policy list misses {name}"


def test_simulate_help_lists_every_policy_with_its_parameters(capsys):
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    text = capsys.readouterr().out
    assert policy_listing() in text
    for registry in FAMILIES.values():
        for cls in registry.classes():
            assert re.search(rf"^\s+{re.escape(cls.name)}\s", text, re.M), cls.name


def test_demo_recommend_and_validation_candidates_are_registered():
    from pregate import demo
    from pregate.executor import validate
    from pregate.simulator.recommend import practical_cachings, practical_speculations

    assert set(demo.SPECULATION) <= set(SPECULATION.names()) and set(demo.CACHING) <= set(CACHING.names())
    for pairs in (validate.DEFAULT_POLICIES, validate.QUICK_POLICIES):
        assert validate.parse_policies(pairs)  # refuses any unregistered name
    for spec, fallback in validate.NO_AHEAD_FALLBACK.items():
        assert SPECULATION.get(spec).needs_ahead and not SPECULATION.get(fallback).needs_ahead
    # recommend reads the registries: every runnable policy is a candidate
    assert set(practical_speculations(True)) <= set(SPECULATION.names())
    assert set(practical_cachings()) == {n for n in CACHING.names()
                                         if not CACHING.get(n).needs_future and n != "fifo"}


# ---------------------------------------------------------------------------- a new policy in one file


@pytest.fixture
def lifo():
    """Load tests/examples/lifo_policy.py (a caching policy in one file) and unregister it afterwards."""
    spec = importlib.util.spec_from_file_location("lifo_policy_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    try:
        yield module.LIFO
    finally:
        CACHING._classes.pop("lifo", None)
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    from pregate.simulator.synthetic import make_trace

    return make_trace(tmp_path_factory.mktemp("lifo") / "t", seqs=3, prompt_len=3, new_tokens=10, layers=4,
                      experts=8, top_k=2, ahead=2, seed=11)


def test_a_policy_in_one_file_runs_through_simulate_sweep_and_listings(lifo, trace, tmp_path, capsys):
    from pregate.simulator.recommend import practical_cachings
    from pregate.simulator.sweep import SweepSpec, plan_sweep, read_results, run_sweep

    assert "lifo" in CACHING.names() and "lifo" in practical_cachings()
    assert "lifo" in policy_listing() and "skip=0" in policy_listing() and "`lifo` | `skip`" in parameter_table()
    out = tmp_path / "s.json"
    assert main(["simulate", str(trace), "--cache-policy", "lifo", "--policy-arg", "skip=1", "--cache", "25%",
                 "--json", str(out), "--quiet"]) == 0
    summary = json.loads(out.read_text())
    assert summary["settings"]["policy_args"] == {"lifo.skip": 1}
    assert summary["hits"] + summary["late_hits"] + summary["misses"] == summary["requests"]
    assert main(["simulate", str(trace), "--cache-policy", "lifo", "--policy-arg", "skip=-1"]) != 0
    assert "lifo.skip" in capsys.readouterr().err
    spec = SweepSpec([str(trace)], {"cache_policy": ["lru", "lifo"], "cache": ["25%"]}, source="t",
                     policy_grid={"lifo.skip": [0, 2]})
    plan = plan_sweep(spec)
    assert len(plan.points) == 3
    run_sweep(plan, tmp_path / "res", workers=1, progress=False)
    frame = read_results(tmp_path / "res")
    assert sorted(frame["cache_policy"].to_list()) == ["lifo", "lifo", "lru"]
    lifo_misses = frame.filter(frame["cache_policy"] == "lifo")["misses"].to_list()
    assert len(set(lifo_misses)) == 2  # the parameter reaches the policy: skip 0 and 2 evict differently


def test_the_example_policy_is_one_short_file():
    text = EXAMPLE.read_text()
    assert text.count("@CACHING.register(") == 1 and len(text.splitlines()) <= 40
