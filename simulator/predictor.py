"""A learned expert predictor: a conditional-logit (softmax) model over a later layer's experts.

Why a model rather than one table: a transition table conditions on one kind
of evidence; this model weighs several, learned per (stack, distance j,
target layer t = l + j) for j = 1..3. When layer l of a token has routed,
every expert b of layer t gets a score from these features:

* static tables counted on the training split: how often b followed this
  token's layer-l top-1 (and its whole layer-l set), and b's share after the
  layer l-1 top-1 (the history of this token, H = 2 layers);
* online tables, counted over every token seen so far (as a policy running
  through a trace would, the held-out tokens included): b after this layer-l
  top-1 over the whole run, within this sequence only, and after the whole
  set. Routing differs from sequence to sequence, so a fixed table alone
  loses to one that keeps counting; the model learns how far to trust each;
* whether the previous token chose b at the target layer (routing is sticky
  from token to token);
* whether the trace's ``ahead[j]`` names b, when the trace has ``ahead``.

Table features enter as log-probabilities (so the model is a weighted product
of the tables' opinions), the others as 0/1; the weights are shared by all
candidate experts, plus one bias per expert. That is a softmax regression with
a few dozen parameters per model, so it does not overfit a short trace. It is
trained by full-batch Adam on cross-entropy with a small L2 penalty, against
the chosen set with the router's first choice weighted up (half the mass on
it, the other half over all k): the first guess is then the likeliest top-1,
which a top-1 accuracy scores, and the ranking after it still follows the set.

It is fitted on a seeded training split of the trace's sequences
(:func:`split_sequences`) and scored only on the other sequences. Saved as
one ``.npz`` file whose ``meta`` entry is JSON; loading never unpickles
(``allow_pickle=False``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pregate.simulator.errors import SimulatorError
from pregate.traces import Trace
from pregate.traces.tokens import TokenRouting, token_routing

FORMAT = "pregate.predictor"
VERSION = 1
DISTANCES = 3
HISTORY = 2  # H: this token's layers l and l-1 feed the static tables
EPS = 1e-3  # floor of a table probability before its log
FEATURES = ("static_top1", "static_set", "static_prev_layer", "online_top1", "online_seq_top1", "online_set",
            "previous_token", "ahead")


def trace_fingerprint(trace: Trace) -> str:
    """Identity of a trace's content: its metadata and its rows' keys (cheap: no expert lists)."""
    import polars as pl

    keys = trace.scan().select(pl.len().alias("rows"), pl.col("seq").n_unique().alias("seqs"),
                               pl.col("seq").cast(pl.Int64).sum().alias("seq_sum"),
                               pl.col("step").cast(pl.Int64).sum().alias("step_sum")).collect().row(0)
    return hashlib.sha256((trace.meta.to_json() + repr(keys)).encode()).hexdigest()[:16]


def split_sequences(seqs, batch_size: int = 1, seed: int = 0, train_fraction: float = 0.5) -> np.ndarray:
    """The training sequences: whole batch groups (sorted sequences, ``batch_size`` a group), shuffled with ``seed``.

    Splitting by group keeps every forward pass of the simulation at that
    batch size either all-training or all-held-out.
    """
    unique = np.unique(np.asarray(seqs))
    groups = np.arange(len(unique)) // max(1, batch_size)
    n_groups = int(groups.max()) + 1 if len(unique) else 0
    order = np.random.default_rng(seed).permutation(n_groups)
    n_train = int(round(n_groups * train_fraction)) if n_groups > 1 else 0
    n_train = min(max(n_train, 1 if n_groups > 1 else 0), n_groups - 1) if n_groups > 1 else 0
    train_groups = np.sort(order[:n_train])
    return unique[np.isin(groups, train_groups)]


@dataclass
class StackData:
    """Per-token inputs of one stack: routing, previous-token routing, and ahead when present."""

    routing: TokenRouting
    prev: np.ndarray  # (T, L, k) previous token's experts (-1 at a sequence's first token)
    ahead: np.ndarray | None  # (T, L, J, w) ahead entries (-1 where absent)
    online: dict = field(default_factory=dict)  # (layer, target) -> online_rows(...)


def _multi_hot(ids: np.ndarray, width: int) -> np.ndarray:
    """(..., k) expert ids (-1 = none) -> (..., width) float32 multi-hot."""
    out = np.zeros(ids.shape[:-1] + (width + 1,), dtype=np.float32)
    np.put_along_axis(out, np.where(ids < 0, width, ids).astype(np.int64), 1.0, axis=-1)
    return out[..., :width]


def online_rows(src: np.ndarray, dst: np.ndarray, seq: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(T, E_dst) twice: per token, ``src_i @ C`` where C counts (src expert, dst expert) pairs of the
    earlier tokens, over all of them and over those of the same sequence; rows normalised to sum 1.

    ``src``/``dst`` are (T, E) multi-hots in the order the tokens run. Computed
    chunk by chunk: the earlier chunks' counts are carried, the pairs within a
    chunk come from a strictly lower-triangular product.
    """
    t_n, e_src = src.shape
    e_dst = dst.shape[1]
    glob = np.zeros((t_n, e_dst), np.float32)
    local = np.zeros((t_n, e_dst), np.float32)
    carry = np.zeros((e_src, e_dst), np.float32)
    carry_seq = np.zeros((e_src, e_dst), np.float32)
    carry_id = None
    for c0 in range(0, t_n, chunk):
        a, b, q = src[c0:c0 + chunk], dst[c0:c0 + chunk], seq[c0:c0 + chunk]
        n = len(a)
        lower = np.tril(a @ a.T, k=-1)
        glob[c0:c0 + n] = a @ carry + lower @ b
        same = q[:, None] == q[None, :]
        from_carry = (q == carry_id)[:, None]
        local[c0:c0 + n] = np.where(from_carry, a @ carry_seq, 0.0) + (lower * same) @ b
        carry += a.T @ b
        last = q[-1]
        in_last = q == last
        carry_seq = (carry_seq if carry_id == last else np.zeros_like(carry_seq)) + a[in_last].T @ b[in_last]
        carry_id = last
    for x in (glob, local):
        x /= np.maximum(1.0, x.sum(axis=1, keepdims=True))
    return glob, local


def _normalise(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(1e-9, rows.sum(axis=-1, keepdims=True))


def table_rows(table: np.ndarray, src: np.ndarray) -> np.ndarray:
    """(N, E_t) rows of a normalised (E_l, E_t) table picked (top-1 ids) or summed (multi-hot) by ``src``."""
    if src.ndim == 1:
        out = table[np.maximum(src, 0)]
        out[src < 0] = 0.0
        return out
    return _normalise(src @ table)


def candidate_features(static_top1, static_set, static_prev, online_top1, online_seq, online_set, prev_t,
                       ahead_j, use_ahead: bool) -> np.ndarray:
    """(N, E, F) features of every candidate expert, in :data:`FEATURES` order (ahead only when used)."""
    logs = [np.log(np.asarray(x, np.float32) + EPS) for x in
            (static_top1, static_set, static_prev, online_top1, online_seq, online_set)]
    blocks = logs + [np.asarray(prev_t, np.float32)]
    if use_ahead:
        blocks.append(np.asarray(ahead_j, np.float32) if ahead_j is not None else np.zeros_like(blocks[-1]))
    return np.stack(blocks, axis=-1)


def _fit(x: np.ndarray, y: np.ndarray, steps: int = 150, lr: float = 0.05, l2: float = 1e-3):
    """Shared weights (F,) and per-expert biases (E,) of a conditional logit by full-batch Adam."""
    n, e, f = x.shape
    params = np.zeros(f + e, np.float32)
    m = np.zeros_like(params)
    v = np.zeros_like(params)
    b1, b2 = 0.9, 0.999
    flat = x.reshape(-1, f)
    for step in range(1, steps + 1):
        w, bias = params[:f], params[f:]
        z = x @ w + bias
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        dz = (p - y) / n
        g = np.concatenate([flat.T @ dz.reshape(-1), dz.sum(axis=0)]) + l2 * params
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        params -= lr * (m / (1 - b1**step)) / (np.sqrt(v / (1 - b2**step)) + 1e-8)
    return params[:f].copy(), params[f:].copy()


@dataclass
class Predictor:
    """Trained models: ``weights[(stack, j, target_layer)]`` holds ``w`` (F,), ``b`` (E,) and the static
    tables ``top1``, ``set`` (layer l -> t) and ``prev`` (layer l-1 -> t); ``meta`` describes the training."""

    meta: dict
    weights: dict[tuple[str, int, int], dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def history(self) -> int:
        return int(self.meta["history"])

    @property
    def use_ahead(self) -> bool:
        return bool(self.meta["use_ahead"])

    @property
    def train_seqs(self) -> set[int]:
        return set(int(s) for s in self.meta["train_seqs"])

    def predict_proba(self, stack: str, j: int, target: int, x: np.ndarray) -> np.ndarray | None:
        """(N, E) probabilities from candidate features (N, E, F); None when no model covers the layer."""
        model = self.weights.get((stack, j, target))
        if model is None:
            return None
        z = x @ model["w"] + model["b"]
        z -= z.max(axis=-1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=-1, keepdims=True)

    def check_shape(self, stacks: dict[str, tuple[int, int]], where: str) -> None:
        """Refuse a predictor trained on another model shape (layers, experts per stack)."""
        mine = {k: tuple(v) for k, v in self.meta["stacks"].items()}
        if mine != stacks:
            raise SimulatorError(f"{where}: the predictor was trained on a model with stacks {mine} "
                                 f"(layers, experts), this one has {stacks}; train one on this model's trace")

    # ---- files ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        arrays = {f"m/{s}/{j}/{t}/{name}": arr for (s, j, t), model in sorted(self.weights.items())
                  for name, arr in model.items()}
        arrays["meta"] = np.array(json.dumps({"format": FORMAT, "version": VERSION, **self.meta}, sort_keys=True))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Predictor":
        path = Path(path)
        if not path.is_file():
            raise SimulatorError(f"predictor file not found: {path} (make one with 'pregate predictor train TRACE -o {path}')")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                weights = {}
                for key in data.files:
                    if key.startswith("m/"):
                        _, s, j, t, name = key.split("/")
                        weights.setdefault((s, int(j), int(t)), {})[name] = data[key].astype(np.float32)
        except (OSError, ValueError, KeyError) as exc:
            raise SimulatorError(f"{path}: not a predictor file ({str(exc).splitlines()[0]})") from None
        if meta.get("format") != FORMAT:
            raise SimulatorError(f"{path}: not a pregate predictor file")
        if meta.get("version") != VERSION:
            raise SimulatorError(f"{path}: predictor format version {meta.get('version')} is not supported "
                                 f"(this pregate reads version {VERSION}); retrain it with 'pregate predictor train'")
        meta.pop("format")
        meta.pop("version")
        return cls(meta, weights)


def stack_data(trace: Trace, with_ahead: bool) -> dict[str, StackData]:
    """Token-level arrays of every stack, plus the ``ahead`` cube when wanted and present."""
    out = {}
    routings = token_routing(trace)
    ahead_cubes = _ahead_cubes(trace) if with_ahead and trace.meta.ahead_distance else {}
    for tr in routings:
        prev = np.full_like(tr.experts, -1)
        prev[1:] = tr.experts[:-1]
        prev[tr.first_of_seq] = -1
        out[tr.stack] = StackData(tr, prev, ahead_cubes.get(tr.stack))
    return out


def _ahead_cubes(trace: Trace) -> dict[str, np.ndarray]:
    """Per stack (T, L, J, w) ``ahead`` entries in token order (-1 where absent)."""
    import polars as pl

    meta = trace.meta
    out = {}
    for name, st in meta.stacks.items():
        w = meta.ahead_k(name)
        rows = (trace.scan().filter(pl.col("stack").cast(pl.String) == name)
                .select("seq", "step", "pos", "layer", "ahead").sort("seq", "step", "pos", "layer").collect())
        if rows.height == 0:
            continue
        tok = rows.select(pl.struct("seq", "step", "pos").rle_id().alias("t")).get_column("t").to_numpy()
        layer = rows.get_column("layer").to_numpy().astype(np.int64)
        cube = np.full((int(tok[-1]) + 1, st.moe_layers, DISTANCES, w), -1, dtype=np.int16)
        col = rows.get_column("ahead")
        for j in range(1, min(DISTANCES, meta.ahead_distance) + 1):
            entry = col.list.get(j - 1, null_on_oob=True)
            for i in range(w):
                vals = entry.list.get(i, null_on_oob=True).fill_null(-1).to_numpy()
                cube[tok, layer, j - 1, i] = vals
        out[name] = cube
    return out


def _online(data: StackData, layer: int, target: int):
    """Causal online tables of (layer -> target) for every token: top-1 over the run, top-1 within the
    sequence, whole set over the run (cached per stack)."""
    key = (layer, target)
    if key not in data.online:
        tr = data.routing
        e = tr.experts_per_layer
        s1, d1 = _multi_hot(tr.experts[:, layer, :1], e), _multi_hot(tr.experts[:, target, :1], e)
        glob1, seq1 = online_rows(s1, d1, tr.seq)
        glob_set, _ = online_rows(_multi_hot(tr.experts[:, layer], e), _multi_hot(tr.experts[:, target], e), tr.seq)
        data.online[key] = (glob1, seq1, glob_set)
    return data.online[key]


def _static_tables(tr: TokenRouting, rows: np.ndarray, layer: int, target: int) -> dict[str, np.ndarray]:
    """Normalised (E, E) tables counted on ``rows``: top-1 -> top-1, set -> set, and layer-1's top-1 -> top-1."""
    e = tr.experts_per_layer
    x = tr.experts[rows]
    ok = (x[:, layer, 0] >= 0) & (x[:, target, 0] >= 0)
    x = x[ok]
    top1 = np.zeros((e, e), np.float32)
    np.add.at(top1, (x[:, layer, 0].astype(np.int64), x[:, target, 0].astype(np.int64)), 1.0)
    sets = _multi_hot(x[:, layer], e).T @ _multi_hot(x[:, target], e)
    prev = np.zeros((e, e), np.float32)
    if layer >= 1:
        ok2 = x[:, layer - 1, 0] >= 0
        np.add.at(prev, (x[ok2, layer - 1, 0].astype(np.int64), x[ok2, target, 0].astype(np.int64)), 1.0)
    # a source never seen falls back on the target layer's marginal
    marginal = _normalise(top1.sum(axis=0) + 1.0)
    out = {}
    for name, t in (("top1", top1), ("set", sets), ("prev", prev)):
        t = t + 0.5 * marginal[None, :]  # light smoothing towards the marginal
        out[name] = _normalise(t).astype(np.float32)
    return out


def _design(data: StackData, model: dict, use_ahead: bool, j: int, target: int,
            rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x (N, E, F), mask) for target layer ``target`` at distance j over token indices ``rows``."""
    tr = data.routing
    e = tr.experts_per_layer
    layer = target - j
    x_all = tr.experts[rows].astype(np.int64)
    glob1, seq1, glob_set = _online(data, layer, target)
    ahead_j = None
    if use_ahead and data.ahead is not None:
        ahead_j = _multi_hot(data.ahead[rows, layer, j - 1], e)
    x = candidate_features(
        table_rows(model["top1"], x_all[:, layer, 0]),
        table_rows(model["set"], _multi_hot(x_all[:, layer], e)),
        table_rows(model["prev"], x_all[:, layer - 1, 0] if layer >= 1 else np.full(len(rows), -1)),
        glob1[rows], seq1[rows], glob_set[rows], _multi_hot(data.prev[rows, target], e), ahead_j, use_ahead)
    mask = (x_all[:, layer] >= 0).all(axis=1) & (x_all[:, target] >= 0).all(axis=1)
    return x, mask


def train(trace: Trace, *, seed: int = 0, batch_size: int = 1, train_fraction: float = 0.5,
          use_ahead: bool | None = None, steps: int = 150, first_weight: float = 0.5,
          data: dict[str, StackData] | None = None, progress: bool = False) -> Predictor:
    """Fit one model per (stack, j, target layer) on the training split of the sequences."""
    from tqdm import tqdm

    has_ahead = bool(trace.meta.ahead_distance)
    use_ahead = has_ahead if use_ahead is None else (use_ahead and has_ahead)
    data = data or stack_data(trace, use_ahead)
    all_seqs = np.concatenate([d.routing.seq for d in data.values()]) if data else np.array([], np.int64)
    train_seqs = split_sequences(all_seqs, batch_size, seed, train_fraction)
    if len(train_seqs) == 0:
        raise SimulatorError("the learned predictor needs at least 2 sequences (one to train on, one to test)")
    jobs = [(name, j, target) for name, d in data.items() for j in range(1, DISTANCES + 1)
            for target in range(j, d.routing.experts.shape[1])]
    weights = {}
    for name, j, target in tqdm(jobs, desc="training", unit="model", disable=not progress):
        d = data[name]
        tr = d.routing
        rows = np.flatnonzero(np.isin(tr.seq, train_seqs))
        model = _static_tables(tr, rows, target - j, target)
        x, mask = _design(d, model, use_ahead, j, target, rows)
        if mask.sum() == 0:
            continue
        chosen = tr.experts[rows[mask], target]
        k = chosen.shape[1]
        y = ((1 - first_weight) * _multi_hot(chosen, tr.experts_per_layer) / k
             + first_weight * _multi_hot(chosen[:, :1], tr.experts_per_layer))
        model["w"], model["b"] = _fit(x[mask], y, steps=steps)
        weights[(name, j, target)] = model
    meta = dict(
        history=HISTORY, features=[f for f in FEATURES if use_ahead or f != "ahead"], use_ahead=use_ahead,
        seed=seed, batch_size=batch_size, train_fraction=train_fraction, steps=steps, first_weight=first_weight,
        trace=str(getattr(trace, "path", "")), trace_fingerprint=trace_fingerprint(trace),
        model_id=trace.meta.model_id, train_seqs=[int(s) for s in train_seqs],
        stacks={name: [s.moe_layers, s.experts] for name, s in trace.meta.stacks.items()},
    )
    return Predictor(meta, weights)


# ---- evaluation on held-out sequences --------------------------------------------------------------

def evaluate(trace: Trace, predictor: Predictor, *, data: dict[str, StackData] | None = None,
             baselines: bool = True) -> list[dict]:
    """Per distance j: top-1 accuracy and recall@k on the held-out sequences, next to the baselines.

    top-1: the first prediction is the expert the router ranked first at layer
    l+j; recall@k: share of the k chosen experts among the first k predicted.
    ``learned`` ranks by the model's probabilities; ``transition`` and
    ``eam`` are the registered policies, shown every training sequence first
    and then the held-out ones token by token (they learn online, as in a
    simulation at batch 1), and score only on held-out tokens (they predict
    layer l+1 only); ``ahead`` is the trace's pre-gating signal.
    Sequences the predictor was trained on are held out only when the trace
    is the one it was trained on.
    """
    data = data or stack_data(trace, with_ahead=True)
    same = trace_fingerprint(trace) == predictor.meta.get("trace_fingerprint")
    train_seqs = np.array(sorted(predictor.train_seqs)) if same else np.array([], np.int64)
    scores: dict[tuple[str, int], list] = {}

    def add(name, j, top1, recall):
        acc = scores.setdefault((name, j), [0.0, 0.0, 0])
        acc[0] += float(np.sum(top1))
        acc[1] += float(np.sum(recall))
        acc[2] += int(len(top1))

    for name, d in data.items():
        tr = d.routing
        k = tr.experts.shape[2]
        rows = np.flatnonzero(~np.isin(tr.seq, train_seqs))
        n_layers = tr.experts.shape[1]
        for j in range(1, DISTANCES + 1):
            for target in range(j, n_layers):
                actual = tr.experts[rows, target].astype(np.int64)
                mask = (tr.experts[rows, target - j] >= 0).all(axis=1) & (actual >= 0).all(axis=1)
                model = predictor.weights.get((name, j, target))
                p = None
                if model is not None:
                    x, _ = _design(d, model, predictor.use_ahead, j, target, rows)
                    p = predictor.predict_proba(name, j, target, x)
                if p is not None and mask.any():
                    order = np.argsort(-p[mask], axis=1, kind="stable")[:, :k]
                    add("learned", j, order[:, 0] == actual[mask, 0], _recall(order, actual[mask]))
                if d.ahead is not None:
                    guess = d.ahead[rows, target - j, j - 1, :k].astype(np.int64)
                    ok = mask & (guess[:, 0] >= 0)
                    if ok.any():
                        add("ahead", j, guess[ok, 0] == actual[ok, 0], _recall(guess[ok], actual[ok]))
    if baselines:
        for policy, j, top1, recall in _policy_scores(trace, data, train_seqs):
            add(policy, j, top1, recall)
    out = []
    for j in range(1, DISTANCES + 1):
        row = {"distance": j}
        for name in ("learned", "transition", "eam", "ahead"):
            acc = scores.get((name, j))
            row[f"{name}_top1"] = acc[0] / acc[2] if acc and acc[2] else None
            row[f"{name}_recall"] = acc[1] / acc[2] if acc and acc[2] else None
        row["tokens"] = scores.get(("learned", j), [0, 0, 0])[2]
        out.append(row)
    return out


def _recall(pred: np.ndarray, actual: np.ndarray) -> np.ndarray:
    k = actual.shape[1]
    hit = (pred[:, :k, None] == actual[:, None, :]) & (actual[:, None, :] >= 0)
    return hit.any(axis=1).sum(axis=1) / k


def _policy_scores(trace: Trace, data: dict[str, StackData], train_seqs: np.ndarray):
    """(policy, j=1, top1 flags, recalls) of ``transition`` and ``eam`` fed token by token, batch 1."""
    from pregate.simulator.policies import SPECULATION
    from pregate.simulator.policies.speculation import LayerView
    from pregate.simulator.stream import Layout

    layout = Layout.from_meta(trace.meta)
    first_gl = {s: int(np.flatnonzero(np.array(layout.stacks) == s)[0]) for s in dict.fromkeys(layout.stacks)}
    for policy_name in ("transition", "eam"):
        policy = SPECULATION.get(policy_name)(layout=layout, seed=0)
        top1, recall = [], []
        pas = 0
        for name, d in data.items():
            tr = d.routing
            k = tr.experts.shape[2]
            g0 = first_gl[name]
            base = layout.base
            held = ~np.isin(tr.seq, train_seqs)
            # training sequences first (not scored), then the held-out ones
            order = np.concatenate([np.flatnonzero(~held), np.flatnonzero(held)])
            groups = np.searchsorted(np.unique(tr.seq), tr.seq)
            n_layers = tr.experts.shape[1]
            ex = tr.experts
            ls = 0
            for t in order.tolist():
                pas += 1
                for layer in range(n_layers):
                    chosen = ex[t, layer]
                    if chosen[0] < 0:
                        continue
                    gl = g0 + layer
                    view = LayerView(ls=ls, group=int(groups[t]), pass_index=pas, layer=gl,
                                     remaining=n_layers - 1 - layer,
                                     needed=[int(base[gl] + e) for e in chosen if e >= 0], tokens=1)
                    ls += 1
                    wanted = policy.predict(view)
                    if not held[t] or layer + 1 >= n_layers or ex[t, layer + 1, 0] < 0:
                        continue
                    nxt = ex[t, layer + 1].astype(np.int64)
                    guess = [o - int(base[gl + 1]) for o in wanted if base[gl + 1] <= o < base[gl + 1] + layout.experts[gl + 1]]
                    top1.append(bool(guess) and guess[0] == nxt[0])
                    recall.append(len(set(guess[:k]) & set(nxt[nxt >= 0].tolist())) / k)
        yield policy_name, 1, np.array(top1, bool), np.array(recall)
