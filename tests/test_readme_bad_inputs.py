"""Every command the READMEs show, given the bad inputs a user trips over: one line, a non-zero exit.

For each ``pregate NAME`` in README.md and the part READMEs (found as
``test_readme_commands`` finds them), :data:`CASES` lists the bad inputs that
apply to it: a missing path, a file where a folder is expected and the other
way round, ``-o FILE`` where a folder is written, an existing output without
``--resume``/``--overwrite``, a truncated Parquet file, an unknown flag and an
out-of-range size. Each runs in-process twice, with and without ``--quiet``,
and must end with exactly one error line (``error: ...`` from pregate, or
``pregate NAME: error: ...`` from the parser, which shows the command's usage
above it), no traceback, a non-zero exit, and the same exit code both times.
A README command with no entry here fails the first test, so a new command
cannot skip this; commands the READMEs do not show are covered all the same.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pregate.cli import main
from pregate.simulator.synthetic import make_trace
from test_readme_commands import readme_commands

FIXTURES = Path(__file__).parent / "fixtures"
TINY = ["--model", "pregate-moe-tiny", "--random-init", "--limit", "2", "--max-new-tokens", "2"]

# command -> [(case, argv)]; placeholders in braces are paths made by the `paths` fixture
CASES: dict[str, list[tuple[str, list[str]]]] = {
    "demo": [
        ("out-is-a-file", ["demo", "-o", "{file}"]),
        ("missing-trace", ["demo", "--trace", "{missing}", "-o", "{out}"]),
        ("corrupt-trace", ["demo", "--trace", "{corrupt}", "-o", "{out}"]),
        ("unknown-flag", ["demo", "--no-such-flag"]),
    ],
    "trace": [
        ("out-is-a-file", ["trace", *TINY, "-o", "{file}"]),
        ("existing-output", ["trace", *TINY, "-o", "{trace_copy}"]),
        ("missing-input", ["trace", *TINY, "--input", "{missing}", "-o", "{out}"]),
        ("input-is-a-folder", ["trace", *TINY, "--input", "{dir}", "-o", "{out}"]),
        ("batch-size-0", ["trace", *TINY, "--batch-size", "0", "-o", "{out}"]),
        ("unknown-flag", ["trace", *TINY, "-o", "{out}", "--no-such-flag"]),
    ],
    "trace-info": [
        ("missing", ["trace-info", "{missing}"]),
        ("file-not-folder", ["trace-info", "{file}"]),
        ("corrupt", ["trace-info", "{corrupt}"]),
        ("json-to-a-folder", ["trace-info", "{trace}", "--json", "{dir}"]),
        ("unknown-flag", ["trace-info", "{trace}", "--no-such-flag"]),
    ],
    "validate-trace": [
        ("missing", ["validate-trace", "{missing}"]),
        ("file-not-folder", ["validate-trace", "{file}"]),
        ("corrupt", ["validate-trace", "{corrupt}"]),
        ("unknown-flag", ["validate-trace", "{trace}", "--no-such-flag"]),
    ],
    "trace-stats": [
        ("missing", ["trace-stats", "{missing}"]),
        ("file-not-folder", ["trace-stats", "{file}"]),
        ("corrupt", ["trace-stats", "{corrupt}"]),
        ("json-to-a-folder", ["trace-stats", "{trace}", "--json", "{dir}"]),
        ("unknown-flag", ["trace-stats", "{trace}", "--no-such-flag"]),
    ],
    "import": [
        ("missing-source", ["import", "{missing}", "--format", "jsonl", "-o", "{out}"]),
        ("source-is-a-folder", ["import", "{dir}", "--format", "jsonl", "-o", "{out}"]),
        ("out-is-a-file", ["import", str(FIXTURES / "import" / "clean.jsonl"), "--format", "jsonl", "-o", "{file}"]),
        ("existing-output", ["import", str(FIXTURES / "import" / "clean.jsonl"), "--format", "jsonl",
                             "-o", "{trace_copy}"]),
        ("truncated-parquet", ["import", "{bad_parquet}", "--format", "parquet", "-o", "{out}"]),
        ("unknown-flag", ["import", str(FIXTURES / "import" / "clean.jsonl"), "--format", "jsonl", "-o", "{out}",
                          "--no-such-flag"]),
    ],
    "models": [
        ("json-to-a-folder", ["models", "--json", "{dir}"]),
        ("unknown-flag", ["models", "--no-such-flag"]),
    ],
    "simulate": [
        ("missing", ["simulate", "{missing}", "--replay-only"]),
        ("file-not-folder", ["simulate", "{file}", "--replay-only"]),
        ("corrupt", ["simulate", "{corrupt}", "--replay-only"]),
        ("json-to-a-folder", ["simulate", "{trace}", "--replay-only", "--json", "{dir}"]),
        ("cache-too-big", ["simulate", "{trace}", "--cache", "1000000"]),
        ("cache-negative", ["simulate", "{trace}", "--cache", "-5"]),
        ("batch-size-0", ["simulate", "{trace}", "--batch-size", "0"]),
        ("missing-profile", ["simulate", "{trace}", "--profile", "{missing}"]),
        ("unknown-flag", ["simulate", "{trace}", "--no-such-flag"]),
    ],
    "sweep": [
        ("missing-trace", ["sweep", "--trace", "{missing}", "-o", "{out}", "--workers", "1"]),
        ("trace-is-a-file", ["sweep", "--trace", "{file}", "-o", "{out}", "--workers", "1"]),
        ("corrupt-trace", ["sweep", "--trace", "{corrupt}", "-o", "{out}", "--workers", "1"]),
        ("out-is-a-file", ["sweep", "--trace", "{trace}", "-o", "{file}", "--workers", "1"]),
        ("missing-config", ["sweep", "{missing}", "-o", "{out}"]),
        ("cache-too-big", ["sweep", "--trace", "{trace}", "--cache", "1000000", "-o", "{out}", "--workers", "1"]),
        ("batch-size-0", ["sweep", "--trace", "{trace}", "--batch-size", "0", "-o", "{out}", "--workers", "1"]),
        ("unknown-flag", ["sweep", "--trace", "{trace}", "-o", "{out}", "--no-such-flag"]),
    ],
    "recommend": [
        ("unknown-model", ["recommend", "--model", "no-such-model", "--profile", "rtx3090"]),
        ("missing-profile", ["recommend", "--model", "mixtral-8x7b", "--profile", "{missing}"]),
        ("vram-negative", ["recommend", "--model", "mixtral-8x7b", "--profile", "rtx3090", "--vram", "-1"]),
        ("batch-size-0", ["recommend", "--model", "mixtral-8x7b", "--profile", "rtx3090", "--batch-size", "0"]),
        ("results-is-a-file", ["recommend", "--model", "mixtral-8x7b", "--results", "{file}"]),
        ("unknown-flag", ["recommend", "--no-such-flag"]),
    ],
    "synth": [
        ("out-is-a-file", ["synth", "--like", "mixtral-8x7b", "--seqs", "1", "--tokens", "2", "-o", "{file}"]),
        ("existing-output", ["synth", "--like", "mixtral-8x7b", "--seqs", "1", "--tokens", "2",
                             "-o", "{trace_copy}"]),
        ("seqs-0", ["synth", "--like", "mixtral-8x7b", "--seqs", "0", "-o", "{out}"]),
        ("unknown-flag", ["synth", "-o", "{out}", "--no-such-flag"]),
    ],
    "predictor": [
        ("missing-trace", ["predictor", "train", "{missing}", "-o", "{out}.npz"]),
        ("corrupt-trace", ["predictor", "train", "{corrupt}", "-o", "{out}.npz"]),
        ("out-is-a-folder", ["predictor", "train", "{trace}", "-o", "{dir}", "--steps", "1"]),
        ("missing-predictor", ["predictor", "eval", "{trace}", "{missing}"]),
        ("corrupt-predictor", ["predictor", "eval", "{trace}", "{file}"]),
        ("unknown-flag", ["predictor", "train", "{trace}", "--no-such-flag"]),
    ],
    "report": [
        ("missing-results", ["report", "{missing}", "-o", "{out}"]),
        ("results-is-a-file", ["report", "{file}", "-o", "{out}"]),
        ("out-is-a-file", ["report", "{results}", "-o", "{file}"]),
        ("corrupt-results", ["report", "{corrupt_results}", "-o", "{out}"]),
        ("unknown-flag", ["report", "{results}", "-o", "{out}", "--no-such-flag"]),
    ],
    "train": [
        ("out-is-a-file", ["train", "--preset", "micro", "--steps", "1", "-o", "{file}"]),
        ("existing-output", ["train", "--preset", "micro", "--steps", "1", "-o", "{trace_copy}"]),
        ("missing-corpus", ["train", "--preset", "micro", "--corpus", "{missing}", "-o", "{out}"]),
        ("unknown-preset", ["train", "--preset", "no-such-preset", "-o", "{out}"]),
        ("steps-0", ["train", "--preset", "micro", "--steps", "0", "-o", "{out}"]),
        ("batch-size-0", ["train", "--preset", "micro", "--batch-size", "0", "-o", "{out}"]),
        ("unknown-flag", ["train", "-o", "{out}", "--no-such-flag"]),
    ],
    "execute": [
        ("missing-trace", ["execute", "--trace", "{missing}", "--device", "cpu"]),
        ("trace-is-a-file", ["execute", "--trace", "{file}", "--device", "cpu"]),
        ("corrupt-trace", ["execute", "--trace", "{corrupt}", "--device", "cpu"]),
        ("unknown-device", ["execute", "--trace", "{trace}", "--device", "no-such-device"]),
        ("cache-too-big", ["execute", "--trace", "{trace}", "--device", "cpu", "--cache", "1000000"]),
        ("batch-size-0", ["execute", "--trace", "{trace}", "--device", "cpu", "--batch-size", "0"]),
        ("json-to-a-folder", ["execute", "--trace", "{trace}", "--device", "cpu", "--json", "{dir}",
                              "--limit", "1"]),
        ("unknown-flag", ["execute", "--trace", "{trace}", "--no-such-flag"]),
    ],
    "calibrate": [
        ("out-is-a-folder", ["calibrate", "--device", "cpu", "--quick", "-o", "{dir}"]),
        ("missing-convert", ["calibrate", "--convert", "{missing}", "-o", "{out}.toml"]),
        ("convert-a-folder", ["calibrate", "--convert", "{dir}", "-o", "{out}.toml"]),
        ("missing-trace", ["calibrate", "--device", "cpu", "--trace", "{missing}", "-o", "{out}.toml"]),
        ("unknown-flag", ["calibrate", "-o", "{out}.toml", "--no-such-flag"]),
    ],
    "validate": [
        ("missing-trace", ["validate", "{missing}", "--profile", "rtx3090", "--device", "cpu", "-o", "{out}"]),
        ("trace-is-a-file", ["validate", "{file}", "--profile", "rtx3090", "--device", "cpu", "-o", "{out}"]),
        ("corrupt-trace", ["validate", "{corrupt}", "--profile", "rtx3090", "--device", "cpu", "-o", "{out}"]),
        ("missing-profile", ["validate", "{trace}", "--profile", "{missing}", "--device", "cpu", "-o", "{out}"]),
        ("out-is-a-file", ["validate", "{trace}", "--profile", "rtx3090", "--device", "cpu", "-o", "{file}"]),
        ("batch-size-0", ["validate", "{trace}", "--profile", "rtx3090", "--device", "cpu", "--batch-size", "0",
                          "-o", "{out}"]),
        ("unknown-flag", ["validate", "{trace}", "--profile", "rtx3090", "--no-such-flag"]),
    ],
}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Read-only inputs shared by every case: a good trace, a damaged one, results, a damaged results folder."""
    root = tmp_path_factory.mktemp("bad-readme")
    trace = make_trace(root / "trace", seqs=2, prompt_len=2, new_tokens=4, layers=4, experts=8, top_k=2, seed=3)
    corrupt = root / "corrupt"
    shutil.copytree(trace, corrupt)
    _truncate(sorted(corrupt.glob("*.parquet"))[0])
    results = root / "results"
    assert main(["sweep", "--trace", str(trace), "--cache-policy", "lru,lfu", "--cache", "25%,50%", "-o",
                 str(results), "--workers", "1", "--quiet"]) == 0
    corrupt_results = root / "corrupt-results"
    shutil.copytree(results, corrupt_results)
    _truncate(sorted(corrupt_results.glob("points-*.parquet"))[0])
    bad_parquet = root / "routing.parquet"
    shutil.copyfile(sorted(trace.glob("*.parquet"))[0], bad_parquet)
    _truncate(bad_parquet)
    return {"trace": trace, "corrupt": corrupt, "results": results, "corrupt_results": corrupt_results,
            "bad_parquet": bad_parquet}


def _paths(inputs: dict, tmp: Path) -> dict:
    """Fresh per run: a file, a folder, a free name, a copy of the trace to stand as an existing output."""
    tmp.mkdir(parents=True)
    (tmp / "plain.txt").write_text("not what was asked for\n")
    (tmp / "folder").mkdir()
    (tmp / "folder" / "x.txt").write_text("x")
    copy = tmp / "existing"
    shutil.copytree(inputs["trace"], copy)
    return {**{k: str(v) for k, v in inputs.items()}, "file": str(tmp / "plain.txt"), "dir": str(tmp / "folder"),
            "missing": str(tmp / "no-such-path"), "out": str(tmp / "out"), "trace_copy": str(copy)}


def _run(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # the parser's errors
        code = exc.code if isinstance(exc.code, int) else 1
    # any other exception escapes and fails the test: that is the traceback a user would see
    return code, capsys.readouterr().err


def _error_line(command: str, err: str) -> str:
    """The one error line; the parser's usage block (``usage:`` and its indented lines) may stand above it."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    rest = [ln for ln in lines if not (ln.startswith("usage:") or ln.startswith(" "))]
    assert len(rest) == 1, f"expected one error line, got:\n{err}"
    line = rest[0]
    assert line.startswith("error: ") or line.startswith(f"pregate {command}: error: "), line
    return line


ALL = [(cmd, case, argv) for cmd, cases in CASES.items() for case, argv in cases]


def test_every_readme_command_has_bad_inputs():
    missing = [c for c in readme_commands() if c not in CASES]
    assert not missing, f"README commands with no bad-input cases here: {missing}"
    assert all(any(case == "unknown-flag" for case, _ in CASES[c]) for c in CASES)


@pytest.mark.parametrize("command, case, argv", ALL, ids=[f"{c}-{k}" for c, k, _ in ALL])
def test_bad_input_is_one_line_and_a_non_zero_exit(command, case, argv, inputs, tmp_path, capsys):
    codes = []
    for quiet in (False, True):
        paths = _paths(inputs, tmp_path / ("quiet" if quiet else "loud"))
        args = [a.format(**paths) for a in argv] + (["--quiet"] if quiet else [])
        code, err = _run(args, capsys)
        assert "Traceback" not in err, err
        assert code != 0, f"{args} exited 0; stderr:\n{err}"
        _error_line(command, err)
        assert Path(paths["file"]).read_text() == "not what was asked for\n"  # a file in the way is never touched
        codes.append(code)
    assert codes[0] == codes[1], f"--quiet changed the exit code: {codes}"
