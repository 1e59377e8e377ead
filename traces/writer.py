"""Writing traces: column arrays to Arrow tables, tables to atomic Parquet parts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pregate.traces.errors import TraceError
from pregate.traces.schema import META_KEY, PHASES, STACKS, TraceMeta, arrow_schema

PART_PATTERN = "part-{:05d}.parquet"
TMP_SUFFIX = ".tmp"


def round_mantissa(values: np.ndarray, bits: int) -> np.ndarray:
    """Round float32 values to ``bits`` mantissa bits (nearest, ties away from zero).

    The rounded low bits are zero, so Parquet's byte-stream-split encoding turns
    them into runs that compress to nothing. 23 bits returns the input unchanged.
    """
    values = np.ascontiguousarray(values, dtype=np.float32)
    if bits >= 23:
        return values
    shift = 23 - bits
    raw = values.view(np.uint32).astype(np.uint64)
    raw = (raw + (1 << (shift - 1))) & ~np.uint64((1 << shift) - 1)
    return raw.astype(np.uint32).view(np.float32)


def _dict_column(values: np.ndarray | list[str], names: tuple[str, ...], column: str) -> pa.DictionaryArray:
    arr = np.asarray(values)
    if arr.dtype.kind in "US":
        lookup = {n: i for i, n in enumerate(names)}
        try:
            codes = np.fromiter((lookup[v] for v in arr.tolist()), dtype=np.int8, count=len(arr))
        except KeyError as exc:
            raise TraceError(f"column '{column}': unknown value {exc.args[0]!r} (known: {', '.join(names)})") from None
    else:
        codes = arr.astype(np.int8)
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int8()), pa.array(list(names), pa.string()))


def _list_column(matrix: np.ndarray, value_type: pa.DataType) -> pa.ListArray:
    """(rows, k) array -> list<value_type> with k items per row."""
    rows, k = matrix.shape
    offsets = pa.array(np.arange(0, rows * k + 1, k, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1), value_type))


def _nested_column(cube: np.ndarray, lengths: np.ndarray, value_type: pa.DataType) -> pa.ListArray:
    """(rows, J, k) array and per-row outer lengths -> list<list<value_type>>.

    Row r keeps its first ``lengths[r]`` entries of J (layers near the end of a
    stack have fewer later layers to predict).
    """
    rows, j_max, k = cube.shape
    lengths = np.asarray(lengths, dtype=np.int32)
    keep = np.arange(j_max)[None, :] < lengths[:, None]
    inner_values = cube[keep].reshape(-1)
    n_inner = int(keep.sum())
    inner_offsets = pa.array(np.arange(0, n_inner * k + 1, k, dtype=np.int32))
    inner = pa.ListArray.from_arrays(inner_offsets, pa.array(inner_values, value_type))
    outer_offsets = np.zeros(rows + 1, dtype=np.int32)
    np.cumsum(lengths, out=outer_offsets[1:])
    return pa.ListArray.from_arrays(pa.array(outer_offsets), inner)


def build_table(
    meta: TraceMeta,
    *,
    seq,
    stack,
    phase,
    step,
    pos,
    layer,
    token,
    experts,
    probs,
    dropped=None,
    ahead=None,
    ahead_probs=None,
) -> pa.Table:
    """Assemble one part's rows from column arrays.

    ``experts``/``probs`` are (rows, k); ``ahead``/``ahead_probs`` are
    (rows, J, w) with J = ``meta.ahead_distance`` and w = ``meta.ahead_k``
    (entries past the end of the stack are ignored), or None for a trace
    without the pre-gating signal.
    ``token`` may contain -1 for unknown token ids (stored as null).
    """
    n = len(seq)
    experts = np.asarray(experts)
    probs = np.asarray(probs, dtype=np.float32)
    if experts.ndim != 2 or experts.shape[0] != n or probs.shape != experts.shape:
        raise TraceError(f"experts/probs must both be ({n}, k); got {experts.shape} and {probs.shape}")
    bits = meta.prob_mantissa_bits
    token_arr = np.asarray(token, dtype=np.int64)
    columns = {
        "seq": pa.array(np.asarray(seq, dtype=np.int32)),
        "stack": _dict_column(stack, STACKS, "stack"),
        "phase": _dict_column(phase, PHASES, "phase"),
        "step": pa.array(np.asarray(step, dtype=np.int32)),
        "pos": pa.array(np.asarray(pos, dtype=np.int32)),
        "layer": pa.array(np.asarray(layer, dtype=np.int16)),
        "token": pa.array(token_arr.astype(np.int32), mask=token_arr < 0),
        "experts": _list_column(experts.astype(np.int16), pa.int16()),
        "probs": _list_column(round_mantissa(probs, bits), pa.float32()),
        "dropped": pa.array(np.zeros(n, bool) if dropped is None else np.asarray(dropped, dtype=bool)),
    }
    if ahead is None or meta.ahead_distance == 0:
        columns["ahead"] = pa.nulls(n, pa.list_(pa.list_(pa.int16())))
        columns["ahead_probs"] = pa.nulls(n, pa.list_(pa.list_(pa.float32())))
    else:
        ahead = np.asarray(ahead)
        ahead_probs = np.asarray(ahead_probs, dtype=np.float32)
        stack_codes = columns["stack"].indices.to_numpy()
        layers = np.asarray(layer, dtype=np.int64)
        n_layers = np.array([meta.stacks[s].moe_layers if s in meta.stacks else 0 for s in STACKS])
        lengths = np.clip(np.minimum(meta.ahead_distance, n_layers[stack_codes] - 1 - layers), 0, None)
        columns["ahead"] = _nested_column(ahead.astype(np.int16), lengths, pa.int16())
        columns["ahead_probs"] = _nested_column(round_mantissa(ahead_probs, bits), lengths, pa.float32())
    schema = arrow_schema().with_metadata({META_KEY: meta.to_json().encode()})
    return pa.Table.from_pydict(columns, schema=schema)


# Encodings chosen by measurement: byte-stream-split makes the zeroed low bytes
# of rounded floats compressible; delta packing suits sorted integer keys.
_WRITE_OPTIONS = dict(
    compression="zstd",
    compression_level=9,
    use_dictionary=["stack", "phase", "token", "experts.list.element", "ahead.list.element.list.element"],
    column_encoding={
        "probs.list.element": "BYTE_STREAM_SPLIT",
        "ahead_probs.list.element.list.element": "BYTE_STREAM_SPLIT",
        "seq": "DELTA_BINARY_PACKED",
        "step": "DELTA_BINARY_PACKED",
        "pos": "DELTA_BINARY_PACKED",
        "layer": "DELTA_BINARY_PACKED",
    },
    write_statistics=True,
)


def write_part_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` so that ``path`` either is absent or complete.

    The data goes to a temporary file in the same folder, is flushed to disk,
    then renamed over ``path`` (rename is atomic within a filesystem).
    """
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        pq.write_table(table, tmp, **_WRITE_OPTIONS)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class TraceWriter:
    """Writes numbered parts into a trace folder; knows which parts already exist.

    ``resume=True`` keeps complete parts of an earlier run (and removes leftover
    temporary files) provided their metadata equals ``meta``; otherwise an
    existing non-empty folder is refused rather than silently mixed.
    """

    def __init__(self, folder: str | Path, meta: TraceMeta, *, resume: bool = False, overwrite: bool = False):
        self.folder = Path(folder)
        self.meta = meta
        if self.folder.exists() and not self.folder.is_dir():
            raise TraceError(f"{self.folder} exists and is not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.folder.glob("*" + TMP_SUFFIX):
            leftover.unlink()
        existing = sorted(self.folder.glob("part-*.parquet"))
        if existing and overwrite:
            for part in existing:
                part.unlink()
            existing = []
        if existing and not resume:
            raise TraceError(
                f"{self.folder} already holds {len(existing)} trace part(s); "
                "pass --resume to continue that trace or --overwrite to replace it"
            )
        if existing:
            existing = self._drop_unreadable(existing)
        if existing:
            found = pq.read_schema(existing[0]).metadata or {}
            old = found.get(META_KEY, b"").decode()
            if _comparable(old) != _comparable(meta.to_json()):
                raise TraceError(
                    f"{self.folder} holds a trace recorded with other settings; "
                    "--resume needs the same model, inputs and options (or use --overwrite)"
                )
        self.done = {int(p.stem.split("-")[1]) for p in existing}

    def _drop_unreadable(self, parts: list[Path]) -> list[Path]:
        """Resume records a part again when the old one cannot be read whole (a copy or disk cut it short).

        Each removal is named on stderr, also with --quiet: the part is redone, so nothing is lost, but the
        user should know the folder had a damaged file.
        """
        import sys

        kept = []
        for part in parts:
            try:
                pq.read_table(part)
            except Exception as exc:  # pyarrow raises several types for a damaged file
                part.unlink()
                print(f"trace: {part} is unreadable ({type(exc).__name__}); recording it again", file=sys.stderr)
                continue
            kept.append(part)
        return kept

    def has_part(self, index: int) -> bool:
        return index in self.done

    def part_path(self, index: int) -> Path:
        return self.folder / PART_PATTERN.format(index)

    def write(self, index: int, table: pa.Table) -> Path:
        path = self.part_path(index)
        write_part_atomic(table, path)
        self.done.add(index)
        return path


def _comparable(meta_json: str) -> dict:
    """Metadata minus fields that may legitimately differ between two runs."""
    try:
        data = json.loads(meta_json)
    except ValueError:
        return {"unreadable": meta_json}
    data.pop("tracer_version", None)
    return data
