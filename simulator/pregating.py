"""The pre-gating score: which experts later routers would pick, ranked, per layer step.

Why one function: a trace's stream (``simulator/stream.py``) and a live model
(``executor/live.py``) both turn the later routers' picks into the ranked
candidates a speculation policy reads (``LayerView.ahead``). If the two
computed the score differently, the live run and the simulator would rank
candidates differently on the same routing and make different prefetches.

The score of an expert at distance ``j`` in a layer step is the sum, over the
step's tokens, of the probability the router of layer ``L + j`` gives it
(only its top-k picks count). Candidates are ranked by score, best first, ties
broken by object id so the order is deterministic.

The sum is compensated (Kahan) in the probabilities' own dtype, over the
entries in row order (tokens in order, best first within top-k): the result
then depends on the rows alone, not on how many threads a dataframe library
used, and on small groups it is the value polars' grouped sum gives, which
earlier streams were built with.
"""

from __future__ import annotations

import numpy as np


def score_dtype(probs: np.ndarray) -> np.dtype:
    """Scores keep float32 or float64 probabilities' dtype (storing them wider adds nothing); others sum as float64."""
    return probs.dtype if probs.dtype in (np.float32, np.float64) else np.dtype(np.float64)


def group_sums(group: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """Kahan sum of ``values`` per ``group`` (0..n_groups-1), each group's entries in the order given.

    Vectorised by rank within the group: the r-th entries of every group are added
    in one array operation, so the loop runs as often as the largest group is long."""
    out = np.zeros(n_groups, values.dtype)
    if len(values) == 0:
        return out
    comp = np.zeros(n_groups, values.dtype)
    order = np.argsort(group, kind="stable")
    g = group[order]
    first = np.flatnonzero(np.concatenate(([True], g[1:] != g[:-1])))
    rank = np.arange(len(g)) - np.repeat(first, np.diff(np.append(first, len(g))))
    by_rank = np.argsort(rank, kind="stable")
    g, v = g[by_rank], values[order][by_rank]
    bounds = np.searchsorted(rank[by_rank], np.arange(int(rank.max()) + 2))
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        idx = g[a:b]
        s = out[idx]
        y = v[a:b] - comp[idx]
        t = s + y
        comp[idx] = (t - s) - y
        out[idx] = t
    return out


def ahead_tables(step: np.ndarray, dist: np.ndarray, obj: np.ndarray, prob: np.ndarray,
                 n_steps: int) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Ranked candidates per distance from the later routers' top-k picks.

    One entry per (token, distance, pick), in row order: ``step`` the layer step
    (0..n_steps-1), ``dist`` the distance j >= 1, ``obj`` the picked expert's
    object id, ``prob`` its probability. Returns ``{j: (starts, objects, scores)}``
    in ascending j: ``starts`` (n_steps + 1 offsets, int64) delimits each layer
    step's candidates, best first; objects are int32.
    """
    step = np.asarray(step, np.int64)
    dist = np.asarray(dist, np.int64)
    obj = np.asarray(obj, np.int64)
    prob = np.asarray(prob)
    prob = prob.astype(score_dtype(prob), copy=False)
    if len(obj) == 0:
        return {}
    # one group per distinct (step, j, obj); a group's entries keep their row order
    keys = np.lexsort((obj, dist, step))
    ks, kd, ko = step[keys], dist[keys], obj[keys]
    new = np.concatenate(([True], (ks[1:] != ks[:-1]) | (kd[1:] != kd[:-1]) | (ko[1:] != ko[:-1])))
    gid_sorted = np.cumsum(new) - 1
    group = np.empty(len(obj), np.int64)
    group[keys] = gid_sorted
    n_groups = int(gid_sorted[-1]) + 1
    scores = group_sums(group, prob, n_groups)
    g_step, g_dist, g_obj = ks[new], kd[new], ko[new]
    # rank: layer step, distance, score best first, object id
    rank = np.lexsort((g_obj, -scores, g_dist, g_step))
    g_step, g_dist, g_obj, scores = g_step[rank], g_dist[rank], g_obj[rank], scores[rank]
    out = {}
    for j in np.unique(g_dist).tolist():
        sel = g_dist == j
        starts = np.searchsorted(g_step[sel], np.arange(n_steps + 1)).astype(np.int64)
        out[int(j)] = (starts, g_obj[sel].astype(np.int32), scores[sel])
    return out
