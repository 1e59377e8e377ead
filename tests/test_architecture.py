"""The layering of ARCHITECTURE.md, checked on the source (imports inside functions included).

Why AST and not import-time checks: most cross-part imports sit inside
functions (to keep ``--help`` fast), so importing a module proves nothing
about what it may pull in later. Every ``import`` and ``from ... import`` in
every module of a part is read from its syntax tree and compared with the
table below, which is the one in ARCHITECTURE.md (a test checks they agree).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# part -> the parts of ours it may import (itself always). ``pregate`` alone (the root
# package: ``__version__``) may be imported by every part; ``pregate.cli``,
# ``pregate.demo`` and ``pregate.errors`` are the command line's, above every part.
ALLOWED: dict[str, set[str]] = {
    "traces": set(),
    "tracer": {"traces"},
    "simulator": {"traces"},
    "executor": {"traces", "tracer", "simulator"},
    "analysis": {"traces", "simulator"},
}
PARTS = set(ALLOWED)


def _imports(path: Path):
    """(line, module) of every absolute import of a ``pregate`` module in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative imports stay inside their package
                continue
            if node.module == "pregate":  # ``from pregate import X``: X may be a part
                for alias in node.names:
                    yield node.lineno, f"pregate.{alias.name}"
            elif node.module:
                yield node.lineno, node.module


def _target(module: str) -> str | None:
    """The part (or 'cli') a ``pregate...`` module belongs to; None for the root or non-pregate modules."""
    parts = module.split(".")
    if parts[0] != "pregate":
        return None
    if len(parts) == 1 or parts[1] == "__version__":
        return None
    return parts[1] if parts[1] in PARTS else "cli"


def violations() -> list[str]:
    found = []
    for part, allowed in ALLOWED.items():
        for path in sorted((ROOT / part).rglob("*.py")):
            for line, module in _imports(path):
                target = _target(module)
                if target is None or target == part or target in allowed:
                    continue
                found.append(f"{path.relative_to(ROOT)}:{line} imports {module} ({part} may import "
                             f"{', '.join(sorted(allowed)) or 'nothing of ours'})")
    return found


def test_no_part_imports_above_its_layer():
    assert violations() == []


def test_the_checker_sees_imports_inside_functions(tmp_path, monkeypatch):
    fake = tmp_path / "traces"
    fake.mkdir()
    (fake / "bad.py").write_text("def f():\n    from pregate.simulator.api import simulate\n    import pregate.errors\n")
    for part in ALLOWED:
        (tmp_path / part).mkdir(exist_ok=True)
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    found = violations()
    assert len(found) == 2 and all("traces/bad.py" in v for v in found)


def _architecture_text() -> str:
    return (ROOT / "ARCHITECTURE.md").read_text()


def test_architecture_table_matches_the_checked_table():
    text = _architecture_text()
    rows = re.findall(r"^\| `(\w+)/` \|[^|]*\|([^|]*)\|", text, flags=re.M)
    table = {name: {p.strip("` ") for p in may.split(",") if p.strip("` ") and "nothing" not in p}
             for name, may in rows if name in PARTS}
    assert table == ALLOWED


def test_paths_named_in_architecture_exist():
    text = _architecture_text()
    named = set(re.findall(r"`((?:traces|tracer|simulator|executor|analysis|pregate|bench|tests)/[\w./*-]*)`", text))
    assert named, "ARCHITECTURE.md names no paths"
    missing = [p for p in sorted(named) if not list(ROOT.glob(p.rstrip("/")))]
    assert missing == []


@pytest.mark.parametrize("doc", ["README.md", "simulator/README.md", "executor/README.md", "traces/README.md"])
def test_docs_point_to_architecture_not_an_absent_design_file(doc):
    path = ROOT / doc
    if not path.exists():
        pytest.skip(f"{doc} absent")
    assert "DESIGN.md" not in path.read_text()


def test_code_and_profiles_cite_no_absent_design_file():
    cited = [str(p.relative_to(ROOT)) for part in [*PARTS, "pregate", "bench"]
             for p in (ROOT / part).rglob("*") if p.suffix in (".py", ".toml", ".md") and "DESIGN.md" in p.read_text()]
    assert cited == []
