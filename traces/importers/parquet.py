"""Parquet (or Arrow IPC) tables with list columns of expert ids and probabilities.

Published routing datasets store one row per (sequence, token, layer) with a
list column of chosen experts and one of their scores, or one row per token
with a list per layer. Columns are mapped exactly as for JSON Lines
(``--seq``, ``--pos``, ``--layer``, ``--experts``, ``--probs``, ...). A folder
stands for its ``*.parquet`` files in name order.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pregate.traces.errors import TraceError
from pregate.traces.importers.common import ImportOptions, Source, expand_sources, read_records
from pregate.traces.importers.model_shapes import ModelShape

SUFFIXES = (".parquet", ".pq", ".arrow", ".feather", ".ipc")


def _load(path: Path) -> pl.DataFrame:
    try:
        if path.suffix.lower() in (".arrow", ".feather", ".ipc"):
            return pl.scan_ipc(path).collect()
        return pl.scan_parquet(path).collect()
    except Exception as exc:  # polars/pyarrow raise several types for damaged files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceError(f"{path}: not a readable Parquet/Arrow file ({first})") from None


def read(paths, opts: ImportOptions, shape: ModelShape) -> Source:
    files = expand_sources(paths, SUFFIXES, "Parquet or Arrow")

    def locate(file_index: int, record: int) -> str:
        return f"{files[file_index]}: row {record}"

    return read_records(files, opts, _load, locate)
