"""A trace's routing as one dense array per stack: token x layer x top-k.

Why: statistics over consecutive layers of a token and consecutive tokens of
a sequence (transitions, overlap, LRU curves) and the learned predictor's
features are all array slices once each token's routing sits in one row.
Tokens are in sequence order (by seq, step, pos); ``-1`` marks a layer a
token has no row for, or a top-k slot its row does not fill (dropped tokens
keep their experts: they were routed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from pregate.traces.reader import Trace


@dataclass
class TokenRouting:
    """One stack's routing: ``experts[t, l, i]`` is token t's i-th choice at MoE layer l (-1: none)."""

    stack: str
    experts_per_layer: int
    seq: np.ndarray  # (T,) sequence id of each token
    step: np.ndarray  # (T,)
    pos: np.ndarray  # (T,)
    experts: np.ndarray  # (T, L, k) int16

    @property
    def n_tokens(self) -> int:
        return len(self.seq)

    @property
    def first_of_seq(self) -> np.ndarray:
        """(T,) bool: the token starts its sequence (it has no previous token)."""
        out = np.ones(len(self.seq), dtype=bool)
        out[1:] = self.seq[1:] != self.seq[:-1]
        return out


def token_routing(trace: Trace | pl.DataFrame, meta=None) -> list[TokenRouting]:
    """One :class:`TokenRouting` per stack of the trace (encoder first)."""
    if isinstance(trace, pl.DataFrame):
        frame = trace.lazy()
    else:
        meta = trace.meta
        frame = trace.scan()
    out = []
    for name in ("encoder", "decoder"):
        if name not in meta.stacks:
            continue
        st = meta.stacks[name]
        rows = (
            frame.filter(pl.col("stack").cast(pl.String) == name)
            .select("seq", "step", "pos", "layer", "experts")
            .sort("seq", "step", "pos", "layer")
            .collect()
        )
        if rows.height == 0:
            continue
        tok_id = rows.select(pl.struct("seq", "step", "pos").rle_id().alias("t")).get_column("t").to_numpy()
        n_tok = int(tok_id[-1]) + 1
        first = np.ones(len(tok_id), dtype=bool)
        first[1:] = tok_id[1:] != tok_id[:-1]
        experts = np.full((n_tok, st.moe_layers, st.top_k), -1, dtype=np.int16)
        layer = rows.get_column("layer").to_numpy().astype(np.int64)
        ok = (layer >= 0) & (layer < st.moe_layers)
        lists = rows.get_column("experts")
        lengths = lists.list.len().to_numpy().astype(np.int64)
        flat = lists.explode().to_numpy()
        flat = np.where(np.isnan(flat), -1, flat).astype(np.int64) if flat.dtype.kind == "f" else flat.astype(np.int64)
        # explode() yields one null for an empty list
        shown = np.maximum(lengths, 1)
        starts = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(shown[:-1], out=starts[1:])
        for i in range(st.top_k):
            has = ok & (lengths > i)
            experts[tok_id[has], layer[has], i] = flat[starts[has] + i]
        out.append(TokenRouting(
            stack=name, experts_per_layer=st.experts,
            seq=rows.get_column("seq").to_numpy()[first], step=rows.get_column("step").to_numpy()[first],
            pos=rows.get_column("pos").to_numpy()[first], experts=experts,
        ))
    return out
