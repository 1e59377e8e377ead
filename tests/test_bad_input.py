"""Bad input on the README's commands: one line, a non-zero exit, never a traceback nor a silent success."""

from __future__ import annotations

import pytest

from pregate.cli import main
from pregate.simulator import sweep as sw
from pregate.simulator.synthetic import make_trace


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    return make_trace(tmp_path_factory.mktemp("bad") / "t", seqs=2, prompt_len=2, new_tokens=4, layers=4,
                      experts=8, top_k=2, seed=5)


@pytest.fixture(scope="module")
def results(trace, tmp_path_factory):
    out = tmp_path_factory.mktemp("res") / "res"
    assert main(["sweep", "--trace", str(trace), "--cache-policy", "lru,lfu", "--cache", "25%,50%", "-o", str(out),
                 "--workers", "1", "--quiet"]) == 0
    return out


def _one_line_error(capsys, code, expect: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and expect in lines[0], err
    return lines[0]


def test_sweep_out_is_a_file(trace, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("x")
    code = main(["sweep", "--trace", str(trace), "-o", str(target), "--quiet"])
    _one_line_error(capsys, code, "is a file")
    code = main(["sweep", "--trace", str(trace), "-o", str(target / "sub"), "--quiet"])
    _one_line_error(capsys, code, "which is a file")
    assert target.read_text() == "x"


def test_report_out_is_a_file(results, tmp_path, capsys):
    target = tmp_path / "taken.html"
    target.write_text("x")
    code = main(["report", str(results), "-o", str(target)])
    _one_line_error(capsys, code, "not a folder")
    code = main(["report", str(target), "-o", str(tmp_path / "rep")])
    _one_line_error(capsys, code, "not a folder")


FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("argv", [
    ["trace", "--model", "pregate-moe-tiny", "--random-init", "--limit", "2", "--max-new-tokens", "2"],
    ["train", "--preset", "tiny", "--steps", "1"],
    ["import", str(FIXTURES / "import" / "clean.jsonl"), "--format", "jsonl"],
    ["demo", "--quiet"],
], ids=lambda a: a[0])
def test_out_is_a_file_on_every_command_that_writes_a_folder(argv, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("x")
    err = capsys.readouterr().err
    code = main([*argv, "-o", str(target)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.startswith("error:") and str(target) in err, err
    assert len(err.strip().splitlines()) == 1 and target.read_text() == "x"


def test_os_errors_become_one_line(monkeypatch, trace, tmp_path, capsys):
    """Any path the OS refuses (here: a folder where a JSON file is asked for) is one line, not a traceback."""
    code = main(["simulate", str(trace), "--replay-only", "--json", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.startswith("error:") and str(tmp_path) in err


def _truncate_a_chunk(folder):
    chunk = sw.chunk_files(folder)[0]
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])
    return chunk


def test_truncated_chunk_is_named_by_report_and_recomputed_by_resume(trace, tmp_path, capsys):
    out = tmp_path / "res"
    args = ["sweep", "--trace", str(trace), "--cache-policy", "lru,lfu", "--cache", "25%,50%", "-o", str(out),
            "--workers", "1", "--quiet"]
    assert main(args) == 0
    keys_before = set(sw.read_results(out)["key"])
    capsys.readouterr()
    chunk = _truncate_a_chunk(out)
    code = main(["report", str(out), "-o", str(tmp_path / "rep")])
    line = _one_line_error(capsys, code, chunk.name)
    assert "rerun the sweep" in line
    # the resumed sweep names the chunk, sets it aside and simulates its points again
    assert main(args) == 0
    err = capsys.readouterr().err
    assert chunk.name in err and "simulated again" in err
    assert chunk.with_name(chunk.name + sw.CORRUPT_SUFFIX).exists()
    frame = sw.read_results(out)
    assert set(frame["key"]) == keys_before and frame.height == len(keys_before)
    assert main(["report", str(out), "-o", str(tmp_path / "rep")]) == 0


def test_unknown_flag_is_reported_with_the_subcommand_usage(capsys):
    for cmd in (["sweep", "--trace", "x", "-o", "y"], ["recommend"], ["simulate", "t"]):
        with pytest.raises(SystemExit) as exc:
            main([*cmd, "--no-such-flag"])
        err = capsys.readouterr().err
        assert exc.value.code == 2
        assert f"usage: pregate {cmd[0]}" in err and f"pregate {cmd[0]}: error: unrecognized arguments" in err


def test_trace_resume_quiet_redoes_a_corrupt_part(tmp_path, capsys):
    """--quiet must not turn a damaged trace into exit 0: the damaged part is named and recorded again."""
    import pyarrow.parquet as pq

    out = tmp_path / "tr"
    base = ["trace", "--model", "pregate-moe-tiny", "--random-init", "--limit", "4", "--batch-size", "2",
            "--max-new-tokens", "3", "--out", str(out)]
    assert main([*base, "--quiet"]) == 0
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == 2
    good = pq.read_table(parts[1])
    data = parts[1].read_bytes()
    parts[1].write_bytes(data[: len(data) // 3])
    capsys.readouterr()
    assert main([*base, "--resume", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert parts[1].name in err and "recording it again" in err
    assert pq.read_table(parts[1]).equals(good)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_trace_stats_on_fewer_layers_than_the_lookahead(layers, tmp_path, capsys):
    """ahead reaches 3 layers on: a shallower trace gets a shorter table (or a line saying why there is none)."""
    from pregate.analysis.routing import lookahead_accuracy
    from pregate.traces import open_trace

    path = make_trace(tmp_path / "t", seqs=2, prompt_len=2, new_tokens=4, layers=layers, experts=8, top_k=2,
                      seed=3, ahead=3)
    table = lookahead_accuracy(open_trace(path))
    assert table.height == layers - 1
    if layers > 1:
        assert table["distance"].to_list() == list(range(1, layers)) and min(table["rows"]) > 0
    assert main(["trace-stats", str(path)]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out
    if layers == 1:
        assert "no lookahead accuracy" in out and "1 MoE layer" in out
    else:
        assert f"\n   {layers - 1} " in out and f"\n   {layers} " not in out
