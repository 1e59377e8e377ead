"""One grammar for every subcommand: this walks ``pregate.cli.build_parser()`` so a new command cannot break it.

Conventions: examples in every --help (and each example parses); --quiet everywhere; --json alone prints
to stdout and --json FILE writes; -o/--out on every command that writes a folder; --profile wherever a
hardware profile is chosen (--gpu only as its alias); validate takes the policy flags of simulate and
sweep; a flag shared by several commands has one default; an unknown flag is reported with the
subcommand's own usage.
"""

from __future__ import annotations

import argparse
import json
import shlex

import pytest

from pregate.cli import COMMANDS, build_parser, main

PARSER = build_parser()
SUBS: dict[str, argparse.ArgumentParser] = PARSER._pregate_commands
WRITES_A_FOLDER = {"demo", "trace", "import", "sweep", "report", "train", "validate"}
PICKS_A_PROFILE = {"simulate", "sweep", "recommend", "execute", "validate"}
POLICY_FLAGS = ("--speculation", "--cache-policy", "--cache", "--batch-size")
# flags that mean the same thing wherever they appear, so they have one default
SAME_DEFAULT = ("--max-new-tokens", "--seed", "--device", "--input", "--text-field", "--limit", "--threads",
                "--workers", "--random-init", "--json", "--quiet", "--max-prompt-tokens", "--overwrite", "--resume")


def _options(sub: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {o: a for a in sub._actions for o in a.option_strings}


def test_every_command_is_walked():
    assert set(SUBS) == set(COMMANDS) and len(SUBS) >= 15


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_examples_exist_and_parse(name):
    text = SUBS[name].description or ""
    assert "examples:" in text, f"'pregate {name} --help' shows no examples"
    block = text.split("examples:", 1)[1].replace("\\\n", " ")
    commands = []
    for line in block.splitlines():
        line = line.split("  #", 1)[0].strip()
        for part in line.split("&&"):
            part = part.split("|", 1)[0].split(">", 1)[0].strip()
            if part.startswith(f"pregate {name} ") or part == f"pregate {name}":
                commands.append(part)
    assert commands, f"no 'pregate {name} ...' line under examples:"
    for command in commands:
        try:
            PARSER.parse_args(shlex.split(command)[1:])
        except SystemExit:
            pytest.fail(f"example does not parse: {command}")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_quiet_everywhere(name):
    action = _options(SUBS[name]).get("--quiet")
    assert action is not None and action.nargs == 0 and action.default is False, f"{name}: no --quiet"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_json_alone_prints_and_json_file_writes(name):
    action = _options(SUBS[name]).get("--json")
    if action is None:
        return
    assert action.nargs == "?" and action.const == "-" and action.default is None, (
        f"{name}: --json must take an optional FILE ('--json' alone: stdout)")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_out_flag(name):
    opts = _options(SUBS[name])
    if name in WRITES_A_FOLDER:
        assert "-o" in opts and "--out" in opts, f"{name} writes a folder but has no -o/--out"
    if "--out" in opts or "-o" in opts:
        assert opts.get("-o") is opts.get("--out"), f"{name}: -o and --out must be one flag"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_profile_flag(name):
    opts = _options(SUBS[name])
    if name in PICKS_A_PROFILE:
        assert "--profile" in opts, f"{name} picks a hardware profile but has no --profile"
    if "--gpu" in opts:
        assert opts["--gpu"] is opts.get("--profile"), f"{name}: --gpu may only be an alias of --profile"


def test_validate_takes_the_policy_flags_of_simulate_and_sweep():
    for name in ("simulate", "sweep", "validate"):
        opts = _options(SUBS[name])
        for flag in POLICY_FLAGS:
            assert flag in opts, f"{name} lacks {flag}"


def test_a_shared_flag_has_one_default():
    for flag in SAME_DEFAULT:
        # sweep's Settings flags are axes: unset means "the config's", not a default value
        seen = {name: _options(sub)[flag].default for name, sub in SUBS.items()
                if flag in _options(sub) and not _options(sub)[flag].dest.startswith("axis_")}
        assert len({repr(v) for v in seen.values()}) <= 1, f"{flag} defaults differ: {seen}"


def _minimal_argv(name: str) -> list[str]:
    """The command with placeholders for what it requires, so that only the unknown flag is wrong."""
    sub = SUBS[name]
    argv = [name]
    for action in sub._actions:
        value = str(list(action.choices)[0]) if action.choices else "x"
        if not action.option_strings and action.nargs not in ("?", "*", argparse.SUPPRESS):
            argv.append(value)
        elif action.option_strings and action.required:
            argv += [action.option_strings[-1], value]
    for group in sub._mutually_exclusive_groups:
        if group.required:
            argv += [group._group_actions[0].option_strings[-1], "x"]
    return argv


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_unknown_flag_shows_the_subcommand_usage(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*_minimal_argv(name), "--no-such-flag"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert f"usage: pregate {name}" in err and f"pregate {name}: error: unrecognized arguments: --no-such-flag" in err


@pytest.mark.parametrize("name", ["trace-info", "trace-stats", "simulate"])
def test_json_alone_and_json_file_behave(name, tmp_path, capsys):
    """The convention in action: JSON on stdout alone; with FILE, the text on stdout and the JSON in FILE."""
    from pregate.simulator.synthetic import make_trace

    trace = make_trace(tmp_path / "t", seqs=2, prompt_len=2, new_tokens=3, layers=4, experts=4, top_k=1, seed=1)
    extra = ["--no-bounds"] if name == "simulate" else []
    assert main([name, str(trace), *extra, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    target = tmp_path / "out.json"
    assert main([name, str(trace), *extra, "--json", str(target)]) == 0
    out = capsys.readouterr().out
    assert json.loads(target.read_text()) == data
    assert out.strip() and not out.lstrip().startswith("{")


def test_recommend_gpu_is_an_alias_of_profile():
    a = PARSER.parse_args(["recommend", "--gpu", "t4"])
    b = PARSER.parse_args(["recommend", "--profile", "t4"])
    assert a.profile == b.profile == "t4"
