"""The trace driver: prompts in batches through greedy ``generate``, routing out as trace parts.

Batch i of the prompts becomes part i of the trace. A part is written only
when its batch is complete, atomically, so an interrupted trace leaves only
whole parts; ``resume`` skips the parts that exist. Because a batch's content
depends only on its prompts, the model and the settings (all recorded in the
metadata and compared on resume), a resumed trace equals an uninterrupted one.

Which rows are kept: every real token a system serving that sequence would
process. Padding is dropped; after a sequence emits EOS its later steps (which
``generate`` still computes for the rest of the batch) are dropped too.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pregate import __version__
from pregate.traces.errors import PregateError
from pregate.traces import TraceMeta, TraceWriter, build_table
from pregate.traces.schema import DEFAULT_AHEAD, STACKS
from pregate.tracer.capture import RoutingRecorder
from pregate.tracer.inputs import BYTE_TOKENIZER, read_prompts, tokenize
from pregate.tracer.models import LoadedModel, load_model


@dataclass
class TraceSettings:
    """Everything that determines a trace (all of it is recorded in its metadata)."""

    model: str
    out: Path
    input: str = "builtin"
    random_init: bool = False
    max_new_tokens: int = 32
    batch_size: int = 8
    max_prompt_tokens: int = 128
    limit: int | None = None
    text_field: str = "text"
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    ahead: int = DEFAULT_AHEAD
    ahead_width: int | None = None  # experts kept per ahead entry (None: the model's top-k)
    prob_bits: int = 10
    tokenizer: str | None = None
    trust_remote_code: bool = False
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    overrides: dict = field(default_factory=dict)  # config overrides (tests: small capacity)


@dataclass
class BatchResult:
    table: object
    tokens: int
    seconds: float


def _eos_pad(model) -> tuple[int | None, int]:
    gen = getattr(model, "generation_config", None)
    eos = getattr(model.config, "eos_token_id", None) or getattr(gen, "eos_token_id", None)
    if isinstance(eos, list):
        eos = eos[0]
    pad = getattr(model.config, "pad_token_id", None)
    if pad is None:
        pad = getattr(gen, "pad_token_id", None)
    if pad is None:
        pad = eos if eos is not None else 0
    return eos, pad


def _generated_lengths(generated: np.ndarray, eos: int | None) -> np.ndarray:
    """Generated tokens per row up to and including the first EOS."""
    n = generated.shape[1]
    if eos is None or n == 0:
        return np.full(generated.shape[0], n)
    is_eos = generated == eos
    first = np.where(is_eos.any(axis=1), is_eos.argmax(axis=1) + 1, n)
    return first


class BatchTracer:
    """Runs one batch through ``generate`` under a :class:`RoutingRecorder` and builds its rows."""

    def __init__(self, loaded: LoadedModel, settings: TraceSettings, meta: TraceMeta):
        self.loaded = loaded
        self.settings = settings
        self.meta = meta
        self.model = loaded.model
        self.encoder_decoder = loaded.adapter.encoder_decoder
        self.eos, self.pad = _eos_pad(self.model)
        self.device = torch.device(settings.device)

    def pad_batch(self, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            # Encoder-decoder models pad on the right; decoder-only models on the left,
            # so that generation continues right after each prompt.
            sl = slice(0, len(seq)) if self.encoder_decoder else slice(width - len(seq), width)
            input_ids[row, sl] = torch.tensor(seq, dtype=torch.long)
            mask[row, sl] = 1
        return input_ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=self.settings.max_new_tokens,
            do_sample=False,
            num_beams=1,
            use_cache=True,
            pad_token_id=self.pad,
            eos_token_id=self.eos,
        )

    def run(self, first_seq: int, ids: list[list[int]]):
        input_ids, mask = self.pad_batch(ids)
        recorder = RoutingRecorder(self.loaded.adapter)
        start = time.perf_counter()
        with recorder:
            output = self.generate(input_ids, mask)
        table = self.rows(recorder, first_seq, input_ids.cpu().numpy(), mask.cpu().numpy(), output.cpu().numpy())
        return table, time.perf_counter() - start

    # ---- from router calls to rows -------------------------------------------------
    def token_index(self, stack: str, shapes: list[int], input_ids, mask, output):
        """Per stack: for the concatenated rows of all its calls, (batch row, step, phase, pos, token, keep)."""
        batch, width = input_ids.shape
        if self.encoder_decoder:
            generated = output[:, 1:]  # column 0 is the decoder start token
        else:
            generated = output[:, width:]
        gen_len = _generated_lengths(generated, self.eos)
        real_len = mask.sum(axis=1)
        parts = []
        for call, n in enumerate(shapes):
            if n % batch:
                raise PregateError(f"router saw {n} tokens in a batch of {batch}; cannot map rows to sequences")
            width_c = n // batch
            b = np.repeat(np.arange(batch), width_c)
            s = np.tile(np.arange(width_c), batch)
            prefill = (stack == "encoder") or (not self.encoder_decoder and call == 0)
            if prefill:
                if width_c != width:
                    raise PregateError(f"prefill call saw {width_c} positions, expected {width}")
                step = np.zeros_like(b)
                pos = s - (width - real_len[b]) * (not self.encoder_decoder)
                token = input_ids[b, s]
                keep = mask[b, s].astype(bool)
            else:
                if width_c != 1:
                    raise PregateError(
                        f"decode step processed {width_c} tokens per sequence; tracing needs generate with a KV cache"
                    )
                if self.encoder_decoder:
                    step = np.full_like(b, call + 1)
                    pos = np.full_like(b, call)
                    token = output[b, call]
                    keep = step <= gen_len[b]
                else:
                    step = np.full_like(b, call)
                    pos = real_len[b] + call - 1
                    token = output[b, width + call - 1]
                    keep = step <= gen_len[b] - 1
            phase = np.full(len(b), 0 if prefill else 1, dtype=np.int8)
            parts.append((b, step, phase, pos, token, keep))
        return [np.concatenate(col) for col in zip(*parts)]

    def rows(self, recorder: RoutingRecorder, first_seq: int, input_ids, mask, output):
        cols: dict[str, list] = {k: [] for k in ("seq", "stack", "phase", "step", "pos", "layer", "token",
                                                  "experts", "probs", "dropped", "ahead", "ahead_probs")}
        J = self.meta.ahead_distance
        for stack in recorder.stacks():
            code = STACKS.index(stack)
            n_layers = recorder.layers(stack)
            first_calls = recorder.calls.get((stack, 0), [])
            shapes = [c.hidden.shape[0] for c in first_calls]
            b, step, phase, pos, token, keep = self.token_index(stack, shapes, input_ids, mask, output)
            kept = int(keep.sum())
            for layer in range(n_layers):
                calls = recorder.calls.get((stack, layer), [])
                if [c.hidden.shape[0] for c in calls] != shapes:
                    raise PregateError(f"{stack} MoE layer {layer} ran a different number of tokens than layer 0")
                experts = torch.cat([c.experts for c in calls]).cpu().numpy()[keep]
                cols["experts"].append(experts)
                cols["probs"].append(torch.cat([c.probs for c in calls]).cpu().numpy()[keep])
                cols["dropped"].append(torch.cat([c.dropped for c in calls]).cpu().numpy()[keep])
                width = self.meta.ahead_k(stack)
                ahead = np.zeros((kept, J, width), np.int16)
                ahead_p = np.zeros((kept, J, width), np.float32)
                if J:
                    a, ap = recorder.ahead(stack, layer, J, width)
                    j = a.shape[1]
                    ahead[:, :j] = a.cpu().numpy()[keep]
                    ahead_p[:, :j] = ap.cpu().numpy()[keep]
                cols["ahead"].append(ahead)
                cols["ahead_probs"].append(ahead_p)
                cols["seq"].append(first_seq + b[keep])
                cols["stack"].append(np.full(kept, code, np.int8))
                cols["phase"].append(phase[keep])
                cols["step"].append(step[keep])
                cols["pos"].append(pos[keep])
                cols["layer"].append(np.full(kept, layer, np.int16))
                cols["token"].append(token[keep])
        data = {k: np.concatenate(v) for k, v in cols.items()}
        order = np.lexsort((data["layer"], data["pos"], data["step"], data["stack"], data["seq"]))
        data = {k: v[order] for k, v in data.items()}
        return build_table(
            self.meta,
            **{k: data[k] for k in ("seq", "stack", "phase", "step", "pos", "layer", "token", "experts", "probs", "dropped")},
            ahead=data["ahead"] if J else None,
            ahead_probs=data["ahead_probs"] if J else None,
        )


def _ahead_width(settings: TraceSettings, loaded: LoadedModel) -> int | None:
    if settings.ahead_width is None or settings.ahead_width == loaded.adapter.top_k():
        return None
    if not 1 <= settings.ahead_width <= loaded.adapter.num_experts():
        raise PregateError(
            f"--ahead-width must be between 1 and the model's {loaded.adapter.num_experts()} experts"
        )
    return settings.ahead_width


def make_meta(loaded: LoadedModel, settings: TraceSettings, prompts: list[str], tokenizer_name: str) -> TraceMeta:
    described = loaded.adapter.describe()
    digest = hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]
    extra = dict(described.pop("extra"))
    extra.update(
        batch_size=settings.batch_size,
        max_new_tokens=settings.max_new_tokens,
        max_prompt_tokens=settings.max_prompt_tokens,
        random_init=loaded.random_init,
        prompts=len(prompts),
        overrides=settings.overrides,
    )
    return TraceMeta(
        model_id=loaded.model_id,
        ahead_distance=settings.ahead,
        ahead_width=_ahead_width(settings, loaded),
        tokenizer=tokenizer_name,
        corpus=f"{settings.input} (sha256:{digest})",
        seed=settings.seed,
        tracer_version=__version__,
        prob_mantissa_bits=settings.prob_bits,
        extra=extra,
        **described,
    )


def trace(settings: TraceSettings, loaded: LoadedModel | None = None) -> Path:
    """Record a trace as settings say; returns the trace folder."""
    if settings.batch_size < 1 or settings.max_new_tokens < 1:
        raise PregateError("--batch-size and --max-new-tokens must be at least 1")
    try:
        device = torch.device(settings.device)
    except RuntimeError:
        raise PregateError(f"unknown device '{settings.device}' (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PregateError("--device cuda asked for, but this torch sees no CUDA device; use --device cpu")
    prompts = read_prompts(settings.input, settings.text_field, settings.limit)
    if loaded is None:
        loaded = load_model(
            settings.model,
            random_init=settings.random_init,
            seed=settings.seed,
            dtype=settings.dtype,
            trust_remote_code=settings.trust_remote_code,
            tokenizer=settings.tokenizer,
            overrides=settings.overrides or None,
        )
    loaded.model.to(settings.device)
    tokenizer_name = (
        getattr(loaded.tokenizer, "name_or_path", "") or "tokenizer"
    ) if loaded.tokenizer is not None else BYTE_TOKENIZER
    meta = make_meta(loaded, settings, prompts, tokenizer_name)
    writer = TraceWriter(settings.out, meta, resume=settings.resume, overwrite=settings.overwrite)
    tracer = BatchTracer(loaded, settings, meta)
    ids = tokenize(prompts, loaded.tokenizer, loaded.model.config.vocab_size, tracer.eos, settings.max_prompt_tokens)
    batches = [(i, ids[i : i + settings.batch_size]) for i in range(0, len(ids), settings.batch_size)]
    todo = [(n, start, chunk) for n, (start, chunk) in enumerate(batches) if not writer.has_part(n)]

    from tqdm.auto import tqdm

    bar = tqdm(total=len(batches), initial=len(batches) - len(todo), unit="batch", desc="tracing",
               disable=not settings.progress)
    rows = 0
    for index, start, chunk in todo:
        table, seconds = tracer.run(start, chunk)
        writer.write(index, table)
        rows += table.num_rows
        bar.set_postfix(rows=rows, s_per_batch=f"{seconds:.2f}")
        bar.update(1)
    bar.close()
    return Path(settings.out)
