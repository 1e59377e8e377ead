"""The trace format: the contract between tracer, simulator, executor and analysis.

A trace is a folder of Parquet parts (``part-00000.parquet``, ...) in the long
layout of :mod:`pregate.traces.schema`: one row per (sequence, stack, step,
position, MoE layer). Every part carries the same JSON metadata describing the
model (see :class:`TraceMeta`). Parts are written atomically, so a folder only
ever holds complete parts; polars' lazy scan over the folder is the reader.

This package imports nothing else of pregate's, so every other part can use it.
"""

from pregate.traces.errors import TraceError, TraceValidationError
from pregate.traces.reader import Trace, open_trace
from pregate.traces.schema import (
    FORMAT_VERSION,
    KEY_COLUMNS,
    StackMeta,
    TraceMeta,
    arrow_schema,
)
from pregate.traces.validate import validate_trace
from pregate.traces.writer import TraceWriter, build_table

__all__ = [
    "FORMAT_VERSION",
    "KEY_COLUMNS",
    "StackMeta",
    "Trace",
    "TraceError",
    "TraceMeta",
    "TraceValidationError",
    "TraceWriter",
    "arrow_schema",
    "build_table",
    "open_trace",
    "validate_trace",
]
