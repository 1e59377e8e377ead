"""The request stream: a trace turned into integer arrays, built once with polars.

Why precompute: both drivers (fast replay and timed run) walk the same
sequence of expert requests many times, once per policy setting. Decoding
Parquet lists row by row in that loop would cost more than the simulation, so
the trace is flattened once into numpy arrays in the order the hardware sees
the requests:

* a *forward pass* is one batch of ``batch_size`` sequences at one step
  (step 0 = prompt prefill and, for encoder-decoder models, the encoder);
* a *layer step* is one MoE layer within a pass (encoder layers first, then
  decoder layers, each in order);
* a *request* is one distinct expert a layer step needs, in order of first
  appearance (sequences, then positions, then best-first within top-k).

Object ids number every expert of every MoE layer: ``base[layer] + expert``,
where layers are numbered globally (encoder layers before decoder layers). For
a single stack with E experts that is ``layer * E + expert``.

Tokens that overflowed expert capacity (``dropped``) skip their expert, so they
request nothing; they still count towards the dense work of their layer step.
Future knowledge (the next use of each request, for Belady and the oracle) is
part of the stream, not a side channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from pregate.simulator.errors import SimulatorError
from pregate.simulator.pregating import ahead_tables
from pregate.traces import Trace, TraceMeta

NEVER = np.iinfo(np.int64).max // 4  # "no next use"; larger than any request index


@dataclass
class Layout:
    """The expert universe: global MoE layers and the object ids of their experts."""

    stacks: list[str]  # stack of each global layer
    layer_in_stack: np.ndarray
    experts: np.ndarray  # experts per global layer
    base: np.ndarray  # first object id of each global layer
    top_k: np.ndarray

    @property
    def n_layers(self) -> int:
        return len(self.experts)

    @property
    def n_objects(self) -> int:
        return int(self.experts.sum())

    def layer_of(self, obj: int) -> int:
        return self.obj_layer[obj]

    @property
    def obj_layer(self) -> list[int]:
        """Global MoE layer of every object id (a list: indexing it is the fastest lookup)."""
        cached = getattr(self, "_obj_layer", None)
        if cached is None:
            cached = np.repeat(np.arange(len(self.experts)), self.experts).tolist()
            self._obj_layer = cached
        return cached

    @classmethod
    def from_meta(cls, meta: TraceMeta) -> "Layout":
        stacks, in_stack, experts, top_k = [], [], [], []
        for name in ("encoder", "decoder"):
            if name in meta.stacks:
                s = meta.stacks[name]
                stacks += [name] * s.moe_layers
                in_stack += list(range(s.moe_layers))
                experts += [s.experts] * s.moe_layers
                top_k += [s.top_k] * s.moe_layers
        experts_arr = np.array(experts, dtype=np.int64)
        base = np.zeros(len(experts), dtype=np.int64)
        np.cumsum(experts_arr[:-1], out=base[1:])
        return cls(stacks, np.array(in_stack, np.int64), experts_arr, base, np.array(top_k, np.int64))


@dataclass
class RequestStream:
    """Integer-coded requests of one trace at one batch size (see module docstring)."""

    meta: TraceMeta
    layout: Layout
    batch_size: int
    # per forward pass
    pass_group: np.ndarray
    pass_step: np.ndarray
    pass_decode: np.ndarray  # bool: a decode step (else prefill)
    pass_seqs: np.ndarray  # sequences in the pass
    pass_ls_start: np.ndarray  # (P+1,) offsets into layer steps
    # per layer step
    ls_pass: np.ndarray
    ls_layer: np.ndarray  # global MoE layer (int16 when the layers fit)
    ls_tokens: np.ndarray  # rows (tokens) through the layer
    ls_ctx: np.ndarray  # sum over tokens of their context length (attention work; int32 when it fits)
    ls_req_start: np.ndarray  # (S+1,) offsets into requests (int32 when they fit)
    # per request
    req_obj: np.ndarray  # object id (int16 when the model's experts fit, else int32)
    req_tokens: np.ndarray  # tokens routed to this expert in this layer step
    req_next: np.ndarray  # index of the next request of the same object, or NEVER
    # ahead predictions: j -> (offsets (S+1,), objects, scores), best first within a layer step
    ahead: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    _occurrences: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def n_requests(self) -> int:
        return len(self.req_obj)

    @property
    def n_layer_steps(self) -> int:
        return len(self.ls_layer)

    @property
    def n_passes(self) -> int:
        return len(self.pass_step)

    @property
    def has_ahead(self) -> bool:
        return bool(self.ahead)

    def needed(self, ls: int) -> np.ndarray:
        """Objects layer step ``ls`` needs, in request order."""
        return self.req_obj[self.ls_req_start[ls] : self.ls_req_start[ls + 1]]

    def next_use(self, obj: int, after: int) -> int:
        """Index of the first request of ``obj`` at or after request index ``after`` (NEVER if none)."""
        if self._occurrences is None:
            order = np.argsort(self.req_obj, kind="stable")
            starts = np.searchsorted(self.req_obj[order], np.arange(self.layout.n_objects + 1))
            self._occurrences = (order, starts)
        order, starts = self._occurrences
        lo, hi = starts[obj], starts[obj + 1]
        i = lo + int(np.searchsorted(order[lo:hi], after))
        return int(order[i]) if i < hi else NEVER

    def max_needed(self) -> int:
        """Most distinct experts one layer step needs (a cache must at least stream these)."""
        return int(np.diff(self.ls_req_start).max()) if self.n_layer_steps else 0


# Trace rows flattened at a time: the build's working memory follows this, not the trace. Polars
# holds about 1.2 kB per chunk row while flattening, and keeps that working set in its allocator
# afterwards (a fixed cost); measured at 4M Mixtral-like rows, resident bytes per row after the build:
# 116 at 1 << 17, 112 at 1 << 16, 115 at 1 << 15 (the stream's own arrays: 72).
CHUNK_ROWS = 1 << 16


class Window:
    """A numpy array read like a list, one window of it held as a Python list at a time.

    Why: the planner indexes the stream element by element, which is fastest on
    lists, but a list of the whole stream costs 8 to 36 bytes per element (the
    larger part of the memory per trace row). A window keeps list speed for
    the sequential walk while only ``size`` elements are ever lists.
    """

    __slots__ = ("array", "size", "lo", "hi", "items")

    def __init__(self, array: np.ndarray, size: int = 1 << 15):
        self.array, self.size = array, size
        self.lo = self.hi = 0
        self.items: list = []

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i):
        if i.__class__ is slice:
            a, b = i.start, i.stop
            if a is not None and b is not None and self.lo <= a and b <= self.hi and i.step is None:
                return self.items[a - self.lo : b - self.lo]
            return self.array[i].tolist()
        if self.lo <= i < self.hi:
            return self.items[i - self.lo]
        if i < 0:
            i += len(self.array)
        lo = max(0, i - self.size // 4)  # a little behind too: slices reach back to a step's start
        self.lo, self.hi = lo, min(len(self.array), lo + self.size)
        self.items = self.array[self.lo : self.hi].tolist()
        return self.items[i - self.lo]


def as_list(values) -> "list | Window":
    """A list stays a list; an array is read through a :class:`Window`."""
    return values if isinstance(values, list) else Window(np.asarray(values))


def build_stream(trace: Trace | pl.DataFrame, meta: TraceMeta | None = None, batch_size: int = 1,
                 with_ahead: bool = True, chunk_rows: int = CHUNK_ROWS) -> RequestStream:
    """Flatten a trace (or its collected frame plus metadata) into a request stream.

    The trace is read and flattened by groups of whole forward-pass groups
    (``batch_size`` sequences each) of about ``chunk_rows`` rows, so the
    working memory is that of one chunk; the arrays of the chunks are joined
    one field at a time. Chunking changes nothing in the result: groups never
    straddle chunks, and next uses are linked across them afterwards.
    """
    if batch_size < 1:
        raise SimulatorError(f"--batch-size must be at least 1, got {batch_size}")
    if isinstance(trace, pl.DataFrame):
        if meta is None:
            raise SimulatorError("build_stream: a DataFrame needs its TraceMeta")
        source = trace.lazy()
        columns = None
    else:
        meta = trace.meta
        columns = ["seq", "stack", "step", "phase", "pos", "layer", "experts", "dropped"]
        if with_ahead and meta.ahead_distance:
            columns += ["probs", "ahead", "ahead_probs"]
        source = trace.scan().select(columns)
    layout = Layout.from_meta(meta)
    per_seq = source.group_by("seq").agg(rows=pl.len()).sort("seq").collect()
    if per_seq.height == 0 or int(per_seq.get_column("rows").sum()) == 0:
        raise SimulatorError("the trace has no rows to simulate")
    seqs = per_seq.get_column("seq").to_numpy()
    rows = per_seq.get_column("rows").to_numpy()
    group_rows = np.add.reduceat(rows, np.arange(0, len(seqs), batch_size))
    # chunks of whole groups: [first group, last group + 1)
    bounds, acc, first = [], 0, 0
    for g, n in enumerate(group_rows.tolist()):
        acc += n
        if acc >= chunk_rows:
            bounds.append((first, g + 1))
            first, acc = g + 1, 0
    if first < len(group_rows):
        bounds.append((first, len(group_rows)))
    parts = []
    files = None if columns is None else _seq_ordered_files(trace)
    if files is not None:  # read in file order, a few row-group batches at a time
        group_first_seq = seqs[::batch_size]
        for g_lo, frame in _streamed_chunks(files, columns, group_first_seq, chunk_rows):
            parts.append(_flatten(frame, meta, layout, batch_size, with_ahead, g_lo * batch_size))
            del frame
    else:
        for g_lo, g_hi in bounds:
            lo_seq, hi_seq = int(seqs[g_lo * batch_size]), int(seqs[min(g_hi * batch_size, len(seqs)) - 1])
            frame = source.filter(pl.col("seq").is_between(lo_seq, hi_seq)).collect()
            parts.append(_flatten(frame, meta, layout, batch_size, with_ahead, g_lo * batch_size))
            del frame
    _release_freed_memory()  # the chunks' temporaries, before the join needs room
    stream = _join(parts, meta, layout, batch_size)
    if files is not None:
        _release_arrow_pool()
    # the chunks' arrays, the join's and the next-use pass's temporaries were freed on the heap: hand
    # those pages back (measured at 4M Mixtral-like rows: 100 MB, more than a third of the stream)
    _release_freed_memory()
    return stream


def _release_arrow_pool() -> None:
    """Hand pyarrow's cached free memory back (its allocator keeps the batches' pages for reuse)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def _seq_ordered_files(trace: Trace) -> list | None:
    """The trace's part files if their rows come in non-decreasing ``seq`` order (as the tracer and the
    synthetic makers write them), else None. Reads the ``seq`` column one row group at a time."""
    import pyarrow.parquet as pq

    last = None
    for f in trace.files:
        pf = pq.ParquetFile(f)
        for g in range(pf.metadata.num_row_groups):
            col = pf.read_row_group(g, columns=["seq"]).column(0).to_numpy()
            if len(col) == 0:
                continue
            if (last is not None and col[0] < last) or bool((np.diff(col) < 0).any()):
                return None
            last = col[-1]
    return list(trace.files)


def _streamed_chunks(files: list, columns: list[str], group_first_seq: np.ndarray, chunk_rows: int):
    """(first group, frame) for chunks of whole pass groups of about ``chunk_rows`` rows, read from
    seq-ordered part files in record batches.

    Why not a filter on the lazy scan per chunk: a Parquet row group is decoded whole for every
    filter that touches it, so each chunk paid (in time and working memory) for a row group of up to
    a million rows with nested lists, and polars' allocator kept that working set. Batches of the
    needed columns bound the decoded rows to about one chunk. A chunk ends before the group its last
    row is in (that group may go on in the next batch); the rest carries over."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    batch_rows = max(1, min(chunk_rows, 1 << 16))
    pending, seqs, held = [], [], 0

    def frame_of(batches):
        frame = pl.from_arrow(pa.Table.from_batches(batches))
        return frame.with_columns(pl.col("stack").cast(pl.String), pl.col("phase").cast(pl.String))

    def group_of(seq) -> int:
        return int(np.searchsorted(group_first_seq, seq, side="right")) - 1

    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=columns, use_threads=False):
            if batch.num_rows == 0:
                continue
            pending.append(batch)
            seqs.append(batch.column("seq").to_numpy())
            held += batch.num_rows
            if held < chunk_rows:
                continue
            first_of_last = group_first_seq[group_of(seqs[-1][-1])]
            if seqs[0][0] >= first_of_last:  # one group so far: keep reading
                continue
            # the batch where the last group starts, and the row within it
            k = next(i for i in range(len(seqs) - 1, -1, -1) if seqs[i][0] < first_of_last)
            cut = int(np.searchsorted(seqs[k], first_of_last, side="left"))
            head = pending[:k] + [pending[k].slice(0, cut)]
            yield group_of(seqs[0][0]), frame_of(head)
            del head
            pending = [pending[k].slice(cut)] + pending[k + 1:]
            seqs = [seqs[k][cut:]] + seqs[k + 1:]
            if pending[0].num_rows == 0:
                pending, seqs = pending[1:], seqs[1:]
            held = sum(len(x) for x in seqs)
    if held:
        yield group_of(seqs[0][0]), frame_of(pending)


def _flatten(frame: pl.DataFrame, meta: TraceMeta, layout: Layout, batch_size: int, with_ahead: bool,
             seq_rank0: int) -> dict:
    """One chunk's arrays (layer steps, passes and requests numbered from 0 within it)."""
    offset = {}
    first = 0
    for name in ("encoder", "decoder"):
        if name in meta.stacks:
            offset[name] = first
            first += meta.stacks[name].moe_layers
    seqs = frame.get_column("seq").unique().sort()
    rank = pl.DataFrame({"seq": seqs, "group": (pl.int_range(0, len(seqs), eager=True) + seq_rank0) // batch_size})
    frame = (
        frame.join(rank, on="seq", how="left")
        .with_columns(
            gl=(pl.col("stack").cast(pl.String).replace_strict(offset, return_dtype=pl.Int64) + pl.col("layer").cast(pl.Int64)),
            decode=pl.col("phase").cast(pl.String) == "decode",
        )
        .sort(["group", "step", "gl", "seq", "pos"])
    )
    # layer steps and passes, numbered in order
    frame = frame.with_columns(
        ls=pl.struct("group", "step", "gl").rle_id(),
        pas=pl.struct("group", "step").rle_id(),
    )
    ls = frame.group_by("ls", maintain_order=True).agg(
        pl.first("pas"), pl.first("gl"), tokens=pl.len(), ctx=(pl.col("pos") + 1).sum()
    )
    passes = frame.group_by("pas", maintain_order=True).agg(
        pl.first("group"), pl.first("step"), decode=pl.col("decode").any(), seqs=pl.col("seq").n_unique()
    )
    rows = (
        frame.filter(~pl.col("dropped"))
        .select("ls", "gl", "experts")
        .with_row_index("row")
        .explode("experts")
    )
    rows = rows.with_columns(obj=pl.Series(layout.base[rows.get_column("gl").to_numpy()]) + pl.col("experts").cast(pl.Int64))
    req = rows.group_by(["ls", "obj"], maintain_order=True).agg(tokens=pl.len())
    del rows
    n_ls = ls.height
    req_ls = req.get_column("ls").to_numpy()
    pass_of_ls = ls.get_column("pas").to_numpy().astype(np.int32)
    part = dict(
        pass_group=passes.get_column("group").to_numpy().astype(np.int32),
        pass_step=passes.get_column("step").to_numpy().astype(np.int32),
        pass_decode=passes.get_column("decode").to_numpy().astype(bool),
        pass_seqs=passes.get_column("seqs").to_numpy().astype(np.int32),
        pass_ls_start=np.searchsorted(pass_of_ls, np.arange(passes.height + 1)).astype(np.int64),
        ls_pass=pass_of_ls,
        ls_layer=ls.get_column("gl").to_numpy().astype(np.int32),
        ls_tokens=ls.get_column("tokens").to_numpy().astype(np.int32),
        ls_ctx=ls.get_column("ctx").to_numpy().astype(np.int64),
        ls_req_start=np.searchsorted(req_ls, np.arange(n_ls + 1)).astype(np.int64),
        req_obj=req.get_column("obj").to_numpy().astype(np.int32),
        req_tokens=req.get_column("tokens").to_numpy().astype(np.int32),
        ahead={},
    )
    if with_ahead and meta.ahead_distance and "ahead" in frame.columns:
        part["ahead"] = _ahead_arrays(frame, layout, n_ls, max(s.top_k for s in meta.stacks.values()))
    return part


OFFSET_FIELDS = {"pass_ls_start": "ls", "ls_req_start": "req", "ls_pass": "pass"}


def _release_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's ``malloc_trim``; nothing elsewhere).

    Why: a chunk's arrays are a few MB each, below glibc's mmap threshold once it has adapted,
    so they live on the heap; freed after being joined they leave holes the allocator keeps,
    and the process would hold the chunks' copy of the stream as well as the joined one."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None


def _join(parts: list[dict], meta: TraceMeta, layout: Layout, batch_size: int) -> RequestStream:
    """Concatenate chunks field by field (freeing each chunk's copy as it goes), renumbering
    the offsets, then link every request to the next request of its object."""
    n_pass = [len(p["pass_step"]) for p in parts]
    n_ls = [len(p["ls_layer"]) for p in parts]
    n_req = [len(p["req_obj"]) for p in parts]
    base = {"pass": np.cumsum([0] + n_pass), "ls": np.cumsum([0] + n_ls), "req": np.cumsum([0] + n_req)}
    # offsets into the requests and the attention sums are kept as int32 whenever they fit: 4 bytes a
    # layer step each, a tenth of what a Mixtral-shaped stream keeps per trace row
    narrow = {"ls_req_start": int(base["req"][-1]), "ls_ctx": max((int(p["ls_ctx"].max()) for p in parts
                                                                  if len(p["ls_ctx"])), default=0)}
    # object ids and layers as int16 whenever the model's experts fit (every MoE model we know of):
    # 2 bytes a request and a layer step, about a twelfth of a Mixtral-shaped stream per trace row
    small = {"req_obj": id_dtype(layout.n_objects), "ls_layer": id_dtype(layout.n_layers)}
    out = {}
    for name in ("pass_group", "pass_step", "pass_decode", "pass_seqs", "pass_ls_start", "ls_pass", "ls_layer",
                 "ls_tokens", "ls_ctx", "ls_req_start", "req_obj", "req_tokens"):
        pieces = []
        for k, p in enumerate(parts):
            piece = p.pop(name)
            if name in narrow and narrow[name] < np.iinfo(np.int32).max:
                piece = piece.astype(np.int32)
            if name in small:
                piece = piece.astype(small[name])
            if name in OFFSET_FIELDS:
                if name != "ls_pass":
                    piece = piece[:-1] if k < len(parts) - 1 else piece  # the next chunk's first offset
                piece = piece + piece.dtype.type(base[OFFSET_FIELDS[name]][k])
            pieces.append(piece)
        out[name] = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        del pieces
        if len(parts) > 1:
            _release_freed_memory()
    ahead = _join_ahead([p.pop("ahead") for p in parts], n_ls, id_dtype(layout.n_objects))
    stream = RequestStream(meta=meta, layout=layout, batch_size=batch_size, req_next=next_uses(out["req_obj"]),
                           **out)
    stream.ahead = ahead
    return stream


def id_dtype(n: int):
    """The narrowest signed integer type (int16 or int32) that numbers ``n`` things."""
    return np.int16 if n <= np.iinfo(np.int16).max else np.int32


def _join_ahead(parts: list[dict], n_ls: list[int], obj_type=np.int32) -> dict:
    js = sorted({j for p in parts for j in p})
    out = {}
    for j in js:
        total = sum(len(p[j][1]) for p in parts if j in p)
        offset_type = np.int32 if total < np.iinfo(np.int32).max else np.int64  # offsets into the entries
        starts, objs, scores, done = [], [], [], 0
        for k, p in enumerate(parts):
            if j in p:
                st, ob, sc = p.pop(j)
            else:
                st, ob, sc = np.zeros(n_ls[k] + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)
            starts.append(((st[:-1] if k < len(parts) - 1 else st) + done).astype(offset_type))
            objs.append(ob.astype(obj_type))
            scores.append(sc)
            done += len(ob)
        out[j] = (np.concatenate(starts), np.concatenate(objs), np.concatenate(scores))
    return out


def next_uses(req_obj: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """Index of the next request of the same object, or NEVER; computed from the end in
    chunks (a stable sort of each), carrying each object's first later use, so the
    temporaries follow the chunk, not the stream."""
    n = len(req_obj)
    out = np.empty(n, np.int64)
    if n == 0:
        return out
    first_after = np.full(int(req_obj.max()) + 1, NEVER, np.int64)
    for lo in range(((n - 1) // chunk) * chunk, -1, -chunk):
        hi = min(lo + chunk, n)
        objs = req_obj[lo:hi]
        order = np.argsort(objs, kind="stable")
        so = objs[order]
        same = so[1:] == so[:-1]
        nxt = np.empty(hi - lo, np.int64)
        nxt[order[:-1]] = np.where(same, order[1:] + lo, first_after[so[:-1]])
        nxt[order[-1]] = first_after[so[-1]]
        firsts = np.ones(len(so), bool)
        firsts[1:] = ~same
        first_after[so[firsts]] = order[firsts] + lo
        out[lo:hi] = nxt
    return out


def _ahead_arrays(frame: pl.DataFrame, layout: Layout, n_ls: int, top_k: int) -> dict:
    """Per layer step and distance j: the experts later routers would pick, best first.

    The rows are only unpacked here (one entry per token, distance and pick, in
    row order); the score and the ranking are :func:`pregate.simulator.pregating.ahead_tables`,
    the function a live model's pre-gating uses too. A trace may store runner-ups
    beyond top-k in each ``ahead`` entry; only the first top-k (the later router's
    own picks) count.
    """
    rows = frame.select("ls", "gl", "ahead", "ahead_probs").filter(pl.col("ahead").list.len() > 0)
    if rows.height == 0:
        return {}
    rows = rows.with_columns(j=pl.int_ranges(1, pl.col("ahead").list.len() + 1)).explode(["ahead", "ahead_probs", "j"])
    rows = rows.with_columns(pl.col("ahead").list.head(top_k), pl.col("ahead_probs").list.head(top_k))
    rows = rows.explode(["ahead", "ahead_probs"])
    j = rows.get_column("j").to_numpy()
    obj = layout.base[rows.get_column("gl").to_numpy() + j] + rows.get_column("ahead").to_numpy().astype(np.int64)
    return ahead_tables(rows.get_column("ls").to_numpy(), j, obj, rows.get_column("ahead_probs").to_numpy(), n_ls)
