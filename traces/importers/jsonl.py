"""JSON Lines routing logs: one JSON object per (sequence, token, layer).

A typical record, as a patched serving engine or a forward hook writes it::

    {"problem_id": 7, "token_idx": 12, "layer": 3, "experts": [5, 1], "gating_probs": [0.61, 0.22]}

Field names are mapped with ``--seq``, ``--pos``, ``--layer``, ``--experts``,
``--probs``, ``--token``, ``--phase``, ``--stack`` (default: the field of the
same name). A record may also hold one list per layer (``"experts": [[5, 1],
[0, 3], ...]``) when it has no layer field: it then stands for every layer.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pregate.traces.errors import TraceError
from pregate.traces.importers.common import ImportOptions, Source, expand_sources, read_records
from pregate.traces.importers.model_shapes import ModelShape

SUFFIXES = (".jsonl", ".ndjson", ".json")


def _load(path: Path) -> pl.DataFrame:
    if not path.read_bytes().strip():
        return pl.DataFrame()
    try:
        return pl.read_ndjson(path, infer_schema_length=None)
    except Exception as exc:  # polars raises several types for malformed JSON
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceError(f"{path}: not valid JSON Lines ({first})") from None


def _record_lines(path: Path) -> tuple[int, ...]:
    """1-based line number of each record (blank lines hold none)."""
    with open(path, "rb") as fh:
        return tuple(n for n, line in enumerate(fh, 1) if line.strip())


def read(paths, opts: ImportOptions, shape: ModelShape) -> Source:
    files = expand_sources(paths, SUFFIXES, "JSON Lines")

    cache: dict[int, tuple[int, ...]] = {}

    def locate(file_index: int, record: int) -> str:
        path = files[file_index]
        if file_index not in cache:
            cache[file_index] = _record_lines(path)
        lines = cache[file_index]
        line = lines[record] if record < len(lines) else record + 1
        return f"{path}: line {line}"

    return read_records(files, opts, _load, locate)
