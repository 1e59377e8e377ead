"""A sweep's results folder: chunked Parquet files written atomically, read back as one table.

Finished points go to ``RESULTS/points-NNNNN.parquet`` chunk files, each written
to a temporary name and linked into place (no file is ever seen half-written).
They are flushed at least every second and whenever the sweep stops, so an
interrupted sweep keeps everything that finished; the reader unions the chunks
and drops duplicate keys, and an unreadable chunk is set aside, never trusted.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from pregate.simulator.sweep_grid import SweepError
from pregate.simulator.sweep_plan import SWEEP_FORMAT, Plan

CHUNK_PREFIX = "points-"
FLUSH_SECONDS = 1.0


def chunk_files(folder: str | Path) -> list[Path]:
    return sorted(Path(folder).glob(f"{CHUNK_PREFIX}*.parquet"))


def _schema_fix(frame):
    """Stable column types across chunks (a chunk may hold only nulls in a column)."""
    import polars as pl

    casts = {}
    for name, dtype in frame.schema.items():
        if dtype == pl.Null:
            casts[name] = pl.String if name in ("expert_table",) else pl.Float64
        elif dtype.is_integer():
            casts[name] = pl.Int64
        elif dtype.is_float():
            casts[name] = pl.Float64
    for name in ("prefetch_precision", "ratio_to_resident", "ratio_to_oracle", "tokens_per_s", "hit_rate",
                 "bound_resident_tokens_per_s", "bound_oracle_tokens_per_s"):
        if name in frame.columns:
            casts[name] = pl.Float64
    return frame.with_columns([pl.col(n).cast(t) for n, t in casts.items()])


def write_chunk(folder: str | Path, rows: list[dict]) -> Path | None:
    """Write rows as the next ``points-NNNNN.parquet``, atomically (temp file, fsync, link)."""
    import polars as pl

    if not rows:
        return None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frame = _schema_fix(pl.DataFrame(rows, infer_schema_length=None)).sort("key")
    tmp = folder / f".{CHUNK_PREFIX}{os.getpid()}-{time.monotonic_ns()}.tmp"
    frame.write_parquet(tmp, compression="zstd")
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    existing = [int(p.stem[len(CHUNK_PREFIX):]) for p in chunk_files(folder) if p.stem[len(CHUNK_PREFIX):].isdigit()]
    n = max(existing, default=0) + 1
    while True:
        target = folder / f"{CHUNK_PREFIX}{n:05d}.parquet"
        try:
            os.link(tmp, target)  # never replaces a chunk another sweep just wrote
            break
        except FileExistsError:
            n += 1
        except OSError:  # no hard links on this filesystem
            if target.exists():
                n += 1
                continue
            os.replace(tmp, target)
            return target
    tmp.unlink()
    return target


CORRUPT_SUFFIX = ".unreadable"


def _read_chunk(path: Path, columns: list[str] | None = None):
    """``(frame, None)``, or ``(None, why)`` when the chunk cannot be read (truncated by a full disk, a copy
    cut short, an edit)."""
    import polars as pl

    try:
        return pl.read_parquet(path, columns=columns), None
    except Exception as exc:  # polars' ComputeError, pyarrow's errors, OSError: all mean "not a usable chunk"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return None, f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def finished_keys(folder: str | Path, set_aside: bool = False) -> set[str]:
    """Keys of the points stored in ``folder``; an unreadable chunk counts as holding none.

    With ``set_aside`` (a sweep about to run) such a chunk is renamed to
    ``*.parquet.unreadable`` and named on stderr, so its points are simulated
    again and the reader never meets it; without, it is only named.
    """
    keys: set[str] = set()
    for f in chunk_files(folder):
        frame, why = _read_chunk(f, ["key"])
        if frame is None:
            if set_aside:
                aside = f.with_name(f.name + CORRUPT_SUFFIX)
                os.replace(f, aside)
                print(f"sweep: {f} is unreadable ({why}); set aside as {aside.name}, "
                      "its points are simulated again", file=sys.stderr)
            else:
                print(f"sweep: {f} is unreadable ({why}); its points count as not done",
                      file=sys.stderr)
            continue
        keys.update(frame["key"].to_list())
    return keys


def read_results(folder: str | Path):
    """Every finished point of a results folder, one row per key, sorted by key (polars)."""
    import polars as pl

    folder = Path(folder)
    files = chunk_files(folder)
    if not files:
        raise SweepError(f"{folder}: no sweep results here (expected {CHUNK_PREFIX}*.parquet from 'pregate sweep')")
    frames = []
    for f in files:
        chunk, why = _read_chunk(f)
        if chunk is None:
            raise SweepError(f"{f} is unreadable ({why}): rerun the sweep that wrote it with "
                             f"the same -o {folder} (it sets the file aside and simulates its points again), "
                             "or delete the file")
        frames.append(_schema_fix(chunk))
    frame = pl.concat(frames, how="diagonal_relaxed")
    return frame.unique("key", keep="first", maintain_order=True).sort("key")


def compact(folder: str | Path, min_files: int = 8) -> None:
    """Merge many small chunks into one. Safe if interrupted: the reader drops duplicate keys."""
    files = chunk_files(folder)
    if len(files) < min_files:
        return
    frame = read_results(folder)
    target = write_chunk(folder, frame.to_dicts())
    for f in files:
        if f != target:
            f.unlink(missing_ok=True)


class _Writer:
    """Buffers finished rows and writes a chunk at most every FLUSH_SECONDS, and on close."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.rows: list[dict] = []
        self.last = time.monotonic()
        self.written = 0

    def add(self, rows: list[dict]) -> None:
        self.rows.extend(rows)
        if time.monotonic() - self.last >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            write_chunk(self.folder, self.rows)
            self.written += len(self.rows)
            self.rows = []
        self.last = time.monotonic()


def _write_manifest(results: Path, plan: Plan) -> None:
    """``sweep.json``: the grid of the latest run, for people and for reports (atomic)."""
    data = {"format": SWEEP_FORMAT, "source": plan.spec.source, **plan.spec.to_dict(), "points": len(plan.points)}
    tmp = results / f".sweep.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, results / "sweep.json")
