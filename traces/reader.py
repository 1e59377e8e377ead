"""Reading traces: a folder of parts (or one Parquet file) as a polars lazy frame."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from pregate.traces.errors import TraceError
from pregate.traces.schema import KEY_COLUMNS, META_KEY, TraceMeta, arrow_schema


@dataclass
class Trace:
    """An opened trace: its metadata and the part files that hold its rows."""

    path: Path
    meta: TraceMeta
    files: list[Path]

    def scan(self) -> pl.LazyFrame:
        """All rows, lazily; ``stack`` and ``phase`` come back as strings."""
        return pl.scan_parquet([str(f) for f in self.files]).with_columns(
            pl.col("stack").cast(pl.String), pl.col("phase").cast(pl.String)
        )

    def collect(self, sort: bool = True) -> pl.DataFrame:
        """All rows in memory, in key order (seq, stack, step, pos, layer) by default."""
        frame = self.scan()
        if sort:
            frame = frame.sort(list(KEY_COLUMNS))
        return frame.collect()

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    @property
    def num_rows(self) -> int:
        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)


def list_parts(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.exists():
        raise TraceError(f"trace not found: {path} (expected a folder of part-*.parquet files)")
    files = sorted(path.glob("part-*.parquet"))
    if not files:
        files = sorted(path.glob("*.parquet"))
    if not files:
        raise TraceError(f"{path} holds no .parquet parts: is it a trace folder?")
    return files


def read_part_meta(file: Path) -> TraceMeta:
    """Open one part's footer, check its columns and return its metadata."""
    try:
        schema = pq.read_schema(file)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise TraceError(f"{file}: not a readable Parquet file (truncated or corrupt?): {exc}") from None
    expected = arrow_schema()
    names = schema.names
    missing = [n for n in expected.names if n not in names]
    if missing:
        raise TraceError(f"{file}: missing column(s) {', '.join(missing)}; not a pregate trace v1")
    for field in expected:
        got = schema.field(field.name).type
        if not _same_type(got, field.type):
            raise TraceError(f"{file}: column '{field.name}' has type {got}, expected {field.type}")
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise TraceError(f"{file}: no pregate metadata in the Parquet footer; import foreign data with 'pregate import'")
    return TraceMeta.from_json(raw, where=str(file))


def _same_type(got, expected) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(expected):
        return (pa.types.is_dictionary(got) and pa.types.is_string(got.value_type)) or pa.types.is_string(got)
    return got == expected


def open_trace(path: str | Path) -> Trace:
    """Open a trace folder: every part must be readable and carry the same metadata."""
    path = Path(path)
    files = list_parts(path)
    meta = read_part_meta(files[0])
    reference = meta.to_json()
    for file in files[1:]:
        other = read_part_meta(file)
        if other.to_json() != reference:
            raise TraceError(f"{file}: metadata differs from {files[0].name}; parts of two traces are mixed")
    return Trace(path=path, meta=meta, files=files)
