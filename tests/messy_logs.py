"""Generated routing logs with the defects real ones have, and the routing they were made from.

Each generator draws seeded routing (the truth), writes it the way a logging
tool would, damaged the way such tools damage it, and returns the truth so a
test can compare an import cell by cell. No real data is copied.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Truth:
    # (sequence label, position, layer) -> (experts best first, probs, token id)
    cells: dict[tuple[str, int, int], tuple[list[int], list[float], int]] = field(default_factory=dict)
    lengths: dict[str, int] = field(default_factory=dict)  # tokens per sequence
    prompt: dict[str, int] = field(default_factory=dict)  # prefill tokens per sequence
    lost: dict[tuple[str, int], int] = field(default_factory=dict)  # (label, layer) -> position of the lost record
    extra: dict = field(default_factory=dict)


def _route(rng, experts: int, k: int) -> tuple[list[int], list[float]]:
    logits = rng.normal(size=experts)
    probs = np.exp(logits) / np.exp(logits).sum()
    top = np.argsort(-probs, kind="stable")[:k]
    p = probs[top] / probs[top].sum()
    return [int(e) for e in top], [round(float(x), 4) for x in p]


def renumbered_decode_log(path: Path, *, with_tokens: bool = True, layers: int = 32, experts: int = 8, k: int = 2,
                          tokens: int = 12, seed: int = 0) -> Truth:
    """A serving-engine patch's log: key (dataset, problem_id), ids overlapping between the two
    datasets; in some (sequence, layer) cells one record was lost and ``token_idx`` renumbered
    after it, so every later record of that cell is one position early. Every sequence has at
    least one such cell."""
    rng = np.random.default_rng(seed)
    truth = Truth()
    records = []
    for dataset in ("gsm8k", "humaneval"):
        for problem in (0, 1):
            label = f"{dataset}/{problem}"
            truth.lengths[label] = tokens
            damaged = sorted(rng.choice(layers, size=min(3, layers - 1), replace=False).tolist())
            for layer in damaged:
                truth.lost[(label, layer)] = int(rng.integers(1, tokens - 1))
            for layer in range(layers):
                written = 0
                for pos in range(tokens):
                    ids, probs = _route(rng, experts, k)
                    token = int(rng.integers(3, 32000))
                    # one token id per position, shared by all layers
                    token = truth.cells.get((label, pos, 0), (None, None, token))[2]
                    truth.cells[(label, pos, layer)] = (ids, probs, token)
                    if truth.lost.get((label, layer)) == pos:
                        continue
                    rec = {"dataset": dataset, "problem_id": problem, "layer": layer, "token_idx": written,
                           "experts": ids, "probs": probs}
                    if with_tokens:
                        rec["token_id"] = token
                    records.append(rec)
                    written += 1
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return truth


def dense_layer_folders(root: Path, *, first_block: int = 2, layers: int = 8, experts: int = 64, k: int = 8,
                        rows_per_seq: int = 64, seqs: int = 3, seed: int = 1) -> Truth:
    """Dense router scores as a published dataset ships them: one folder per block
    (``Layer_2/`` .. ``Layer_9/``), each with one CSV of ``rows_per_seq``-row blocks, one block per
    sequence, no sequence or position column."""
    rng = np.random.default_rng(seed)
    truth = Truth()
    for layer in range(layers):
        folder = root / f"Layer_{first_block + layer}"
        folder.mkdir(parents=True)
        scores = rng.normal(size=(seqs * rows_per_seq, experts)).round(5)
        with open(folder / "router_logits.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow([f"expert_{e}" for e in range(experts)])
            w.writerows(scores.tolist())
        for row in range(seqs * rows_per_seq):
            top = np.argsort(-scores[row], kind="stable")[:k]
            truth.cells[(str(row // rows_per_seq), row % rows_per_seq, layer)] = ([int(e) for e in top], [], -1)
    truth.extra["blocks"] = list(range(first_block, first_block + layers))
    return truth


def execution_order_log(path: Path, *, layers: int = 4, experts: int = 8, k: int = 2, prompts=(5, 3), steps: int = 4,
                        lose=(("b", 2, 1), ("a", 6, 3), ("a", 1, 2)), seed: int = 2) -> Truth:
    """A forward hook's log in execution order: per request, the prompt's run of records for each
    layer, then one record per layer per decode step, every record with position 0. ``lose`` lists
    (request, position, layer) records that the hook lost (a prefill one among them)."""
    rng = np.random.default_rng(seed)
    truth = Truth()
    lost = {(r, p, layer) for r, p, layer in lose}
    records = []
    for name, prompt in zip(("a", "b"), prompts):
        truth.lengths[name] = prompt + steps
        truth.prompt[name] = prompt
        tokens = [int(t) for t in rng.integers(3, 1000, size=prompt + steps)]
        passes = [list(range(prompt))] + [[prompt + s] for s in range(steps)]
        for positions in passes:
            for layer in range(layers):
                for pos in positions:
                    ids, probs = _route(rng, experts, k)
                    truth.cells[(name, pos, layer)] = (ids, probs, tokens[pos])
                    if (name, pos, layer) in lost:
                        truth.lost[(name, layer)] = pos
                        continue
                    records.append({"request": name, "pos": 0, "layer": layer, "token_id": tokens[pos],
                                    "experts": ids, "probs": probs})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return truth
