"""Importing routing from other tools: foreign routing logs as pregate traces.

People who study MoE offloading often have routing logs already: patches to
vLLM or SGLang that log the chosen experts, their own forward hooks, published
trace datasets. ``pregate import`` turns them into a trace (format v1, see
:mod:`pregate.traces.schema`) that the simulator, the executor's trace-driven
model and the analysis read like a recorded one::

    pregate import --format jsonl logs/*.jsonl -o runs/mixtral-imported --model mixtral-8x7b \\
        --seq problem_id --pos token_idx --layer layer --experts experts --probs gating_probs
    pregate import --format csv-dense dumps/layer*.csv -o runs/olmoe --model olmoe-1b-7b --seq request
    pregate import --format parquet routing.parquet -o runs/qwen3 --model qwen3-30b-a3b --phase stage

Formats (one module each):

- ``jsonl``: JSON Lines, one record per (sequence, token, layer) with the
  top-k expert ids and their gate probabilities.
- ``csv-dense``: CSV, one row per token and one column per expert holding its
  router score; the top-k are the largest scores, probabilities the softmax
  over the scores (``--scores-are-probs`` when they are probabilities already).
- ``parquet``: Parquet or Arrow tables with list columns of ids and scores.
- ``sglang-routed-experts``: SGLang generate responses with
  ``meta_info.routed_experts`` (base64 int32 by token, layer, top-k slot).

Fields are mapped with ``--seq``, ``--pos``, ``--layer``, ``--experts``,
``--probs``, ``--token``, ``--phase``, ``--stack``, ``--dropped``; each
defaults to the field of the same name when the source has one. ``--layer N``
(a number) puts every record in MoE layer N; without a layer field the number
in the file name (``layer3.csv``, ``moe_layer-12.jsonl``) is used. A record
whose experts hold one list per layer (and that has no layer field) stands for
every layer of its token.

The model. The source rarely says what the model looks like, but the
simulator needs it to cost transfers. ``--model NAME`` fills in a published
shape (switch-base-8..256, switch-large-128, mixtral-8x7b, olmoe-1b-7b,
qwen1.5-moe-a2.7b, qwen3-30b-a3b), ``--model-config FILE`` reads a TOML or
JSON file (experts, moe_layers, top_k, d_model, d_ff, dtype, gating,
activation, optionally stacks, dense_params, model_id, family, tokenizer), and
flags (``--num-experts`` or ``--experts N``, ``--moe-layers``, ``--top-k``,
``--d-model``, ``--d-ff``, ``--dtype``, ``--activation``, ``--gating``)
override both. Experts, top-k and layers not given are inferred from the data
(largest id + 1, the list length, largest layer + 1) and the summary says so;
data that contradicts a given shape (an id >= experts, a list whose length is
not top-k, a layer past the last) is refused, naming the file and record.
Without d_model and d_ff the trace records no expert size.

The rows. Imported traces have no pre-gating signal (``ahead_distance`` 0).
Cleaning follows these rules, and the summary prints what was read, kept and
dropped:

- Records are sorted into key order (sequence, stack, step, position, layer).
- Position: from the position field, else the order of the records of each
  (sequence, stack, layer) in the files (files in the order given). Without a
  position field records cannot be told apart from repeated tokens, so
  duplicates are only detected with one.
- Exact duplicate records are dropped and counted. A key given twice with
  different content is an error unless ``--on-duplicate first|last`` (in file
  order).
- Every token of a sequence must appear in every MoE layer that the import
  has records for. Where layers disagree the import fails with a summary of
  the sequences (by the source's own key), layers and files affected, unless
  ``--on-mismatch drop`` (drop those sequences) or ``--on-mismatch
  keep-aligned``: a layer that lost records is cut at its first gap, since
  tools renumber the records after a lost one (see :mod:`.align`), then the
  tokens present in every layer are kept, or every token with
  ``--on-missing hole`` (a layer without its record is a hole).
- Keys and tokens: ``--seq a,b`` joins fields into one sequence key, kept as a
  label; ``--layer-from-path``, ``--layer-offset``, ``--layer-map`` read layers
  from paths; ``--rows-per-seq N`` and ``--order execution`` find tokens in
  logs without usable positions (see :mod:`.order`).
- Phase: from the phase field (``prefill`` or ``decode``), else encoder tokens
  are prefill and decoder tokens decode. Step: prefill rows 0; decode tokens
  1, 2, ... in position order within their sequence.
- Experts are stored best first: a record whose probabilities are not in
  descending order is reordered (and counted). Without probabilities every
  chosen expert gets 1/k. Without token ids the token column is null.
- Stack: from the stack field, else ``--default-stack`` (decoder).

The trace is written in parts of at most ``--part-rows`` rows (1M), each
atomically; an existing trace folder is replaced only with ``--overwrite``.
Everything is checked before the first part is written.
"""

from __future__ import annotations

from pathlib import Path

from pregate.traces.errors import TraceError
from pregate.traces.importers.common import ColumnMap, ImportOptions, ImportReport
from pregate.traces.importers.model_shapes import KNOWN_MODELS, ModelShape, build_shape, known_model

FORMATS = {
    "jsonl": "pregate.traces.importers.jsonl",
    "csv-dense": "pregate.traces.importers.csv_dense",
    "parquet": "pregate.traces.importers.parquet",
    "sglang-routed-experts": "pregate.traces.importers.sglang",
}


def import_trace(sources, out: str | Path, opts: ImportOptions, shape: ModelShape | None = None) -> ImportReport:
    """Read ``sources`` in ``opts.format``, clean them and write the trace to ``out``."""
    import importlib

    from pregate.traces.importers.common import check_output, import_frames, write_trace

    if opts.format not in FORMATS:
        raise TraceError(f"unknown import format '{opts.format}' (known: {', '.join(FORMATS)})")
    shape = shape or ModelShape()
    check_output(Path(out), opts.overwrite)
    reader = importlib.import_module(FORMATS[opts.format])
    source = reader.read(list(sources), opts, shape)
    report = ImportReport(format=opts.format)
    meta, columns = import_frames(source, shape, opts, report)
    write_trace(out, meta, columns, opts, report)
    return report


__all__ = [
    "FORMATS",
    "KNOWN_MODELS",
    "ColumnMap",
    "ImportOptions",
    "ImportReport",
    "ModelShape",
    "build_shape",
    "import_trace",
    "known_model",
]
