"""Every command the READMEs show answers --help, and the listing commands run to the end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pregate.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parent.parent
READMES = [ROOT / "README.md", *sorted(ROOT.glob("*/README.md"))]


def readme_commands() -> list[str]:
    """Subcommands written as `pregate NAME` in code spans or blocks of the READMEs."""
    found = set()
    for path in READMES:
        text = path.read_text()
        code = re.findall(r"```.*?```", text, flags=re.S) + re.findall(r"`[^`\n]+`", text)
        for chunk in code:
            found.update(re.findall(r"(?:^|[\s`(])pregate ([a-z][a-z-]+)", chunk, flags=re.M))
    return sorted(found)


def test_readmes_name_only_real_commands():
    commands = readme_commands()
    assert "models" in commands and "import" in commands  # the scan finds what the README shows
    unknown = [c for c in commands if c not in COMMANDS]
    assert not unknown, f"READMEs show commands that do not exist: {unknown}"


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_help(command, capsys):
    if command not in COMMANDS:
        pytest.skip("reported by test_readmes_name_only_real_commands")
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and f"pregate {command}" in out


def test_listing_commands_run(capsys):
    assert main([]) == 0
    assert "models" in capsys.readouterr().out
    assert main(["models"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["family", "name", "experts"]
    assert any("Mixtral-8x7B" in line for line in table) and any("pregate-moe-tiny" in line for line in table)
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    mixtral = by_name["mistralai/Mixtral-8x7B-v0.1"]
    assert (mixtral["experts"], mixtral["top_k"], mixtral["moe_layers"]) == (8, 2, "32")
    assert mixtral["expert_mb_bf16"] == round(3 * 4096 * 14336 * 2 / 1e6, 2)
    assert by_name["pregate-moe-tiny"]["moe_layers"] == "6"
    assert by_name["google/switch-base-8"]["moe_layers"] == "6+6"


def test_models_summary_matches_the_built_model():
    """The config-only shape pregate models prints is what the tracer reads from the built model."""
    from pregate.tracer.models import build_random, known_variants

    for cls, variant in known_variants():
        if variant.params is not None and variant.name != "pregate-moe-small-140m":
            continue  # only the tiny shapes are cheap to build
        summary = cls.summarize(cls.build_config(dict(variant.config)))
        described = build_random(variant.name).adapter.describe()
        stacks = described["stacks"]
        layers = "+".join(str(s["moe_layers"]) for s in stacks.values())
        any_stack = next(iter(stacks.values()))
        assert (summary["experts"], summary["top_k"], summary["moe_layers"]) == \
            (any_stack["experts"], any_stack["top_k"], layers), variant.name
        assert summary["expert_params"] == described["expert_params"], variant.name
