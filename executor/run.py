"""Running the executor: a trace through the synthetic model, or a real model through generate.

:class:`TraceExecutor` prepares a trace once (request streams per batch size,
the synthetic model, the host store) and runs many settings on it; this is
what ``pregate validate`` uses. :func:`execute_model` loads a Hugging Face or
small-MoE model, moves its experts into the host store, and generates.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from pregate.executor.device import Device, ExecutorError, now
from pregate.executor.runtime import OffloadRuntime, torch_dtype, trace_planner_factory
from pregate.executor.store import HostStore
from pregate.executor.synthetic import SyntheticModel, spec_for_meta
from pregate.simulator.costs import DTYPE_BYTES
from pregate.simulator.policies import BUFFERING
from pregate.simulator.settings import Settings, parse_cache_size
from pregate.simulator.stream import Layout, RequestStream, build_stream
from pregate.traces import Trace, open_trace


def check_fits(memory: float, dense_bytes: int, capacity: int, expert_bytes: int, where: str) -> None:
    """Refuse a cache that cannot fit the device memory (of the profile or the device)."""
    need = dense_bytes + capacity * expert_bytes
    if need > memory:
        raise ExecutorError(
            f"a cache of {capacity} experts ({capacity * expert_bytes / 1e9:.2f} GB) plus {dense_bytes / 1e9:.2f} GB "
            f"of dense weights needs {need / 1e9:.2f} GB, more than the {memory / 1e9:.2f} GB of {where}"
        )


def cache_capacity(settings: Settings, total: int, expert_bytes: int, max_needed: int) -> int:
    """Experts the device cache holds for ``settings`` (as the simulator computes it)."""
    requested = parse_cache_size(settings.cache, total, expert_bytes)
    return BUFFERING.get(settings.buffering)().capacity(requested, total, max_needed)


# ---- traces -----------------------------------------------------------------------------

def trace_frame(trace: Trace, seqs: int | None = None):
    """The columns the executor reads, for the first ``seqs`` sequences (all by default)."""
    columns = ["seq", "stack", "step", "phase", "pos", "layer", "experts", "dropped"]
    if trace.meta.ahead_distance:
        columns += ["probs", "ahead", "ahead_probs"]
    frame = trace.scan().select(columns).collect()
    if seqs is not None:
        import polars as pl

        keep = frame.get_column("seq").unique().sort().head(seqs)
        frame = frame.filter(pl.col("seq").is_in(keep.implode()))
    return frame


def trace_stream(frame, meta, batch_size: int, groups: int | None = None) -> RequestStream:
    """The request stream at ``batch_size``; ``groups`` keeps the first groups x batch_size sequences."""
    if groups is not None:
        import polars as pl

        keep = frame.get_column("seq").unique().sort().head(groups * batch_size)
        frame = frame.filter(pl.col("seq").is_in(keep.implode()))
    return build_stream(frame, meta, batch_size=batch_size)


class TraceExecutor:
    """A trace prepared for execution: its streams, the synthetic model and the host store."""

    def __init__(self, trace, device: str = "cpu", dtype: str = "", seed: int = 0, seqs: int | None = None):
        self.trace: Trace = trace if isinstance(trace, Trace) else open_trace(trace)
        self.meta = self.trace.meta
        if self.meta.d_model <= 0 or self.meta.d_ff <= 0:
            raise ExecutorError("the trace's metadata has no d_model/d_ff; re-import it with --d-model and --d-ff")
        self.device = Device(device)
        self.dtype_name = dtype or self.meta.dtype
        if self.dtype_name not in DTYPE_BYTES:
            raise ExecutorError(f"dtype '{self.dtype_name}' cannot run on the device (use float32, bfloat16 or float16)")
        self.dtype = torch_dtype(self.dtype_name)
        self.seed = seed
        self.frame = trace_frame(self.trace, seqs)
        self.layout = Layout.from_meta(self.meta)
        self.spec = spec_for_meta(self.meta)
        self.store = HostStore(self.spec, self.layout.n_objects, self.dtype, pin=self.device.cuda)
        self.store.fill_random(seed)
        self._streams: dict[tuple, RequestStream] = {}
        self.model: SyntheticModel | None = None

    @property
    def expert_bytes(self) -> int:
        return self.store.nbytes("full")

    def stream(self, batch_size: int, groups: int | None = None) -> RequestStream:
        """The request stream at ``batch_size``; ``groups`` keeps the first groups x batch_size sequences."""
        key = (batch_size, groups)
        if key not in self._streams:
            self._streams[key] = trace_stream(self.frame, self.meta, batch_size, groups)
        return self._streams[key]

    def synthetic(self, stream: RequestStream) -> SyntheticModel:
        tokens = int(stream.ls_tokens.max())
        decode = stream.pass_decode[stream.ls_pass]
        ctx = int(np.ceil(stream.ls_ctx[decode] / stream.ls_tokens[decode]).max()) if decode.any() else 1
        if self.model is None or self.model.x0.shape[0] < tokens or self.model.kv.shape[3] < ctx:
            old = self.model
            self.model = None
            del old
            self.model = SyntheticModel(self.meta, self.device.torch, self.dtype, tokens, ctx, seed=self.seed)
        return self.model

    def capacity(self, settings: Settings, groups: int | None = None) -> int:
        stream = self.stream(settings.batch_size, groups)
        return cache_capacity(settings, self.layout.n_objects, self.expert_bytes, stream.max_needed())

    def runtime(self, settings: Settings, poison: bool = False, record: bool = False,
                groups: int | None = None) -> OffloadRuntime:
        stream = self.stream(settings.batch_size, groups)
        capacity = self.capacity(settings, groups)
        for attempt in range(2):
            try:
                return OffloadRuntime(self.device, self.store, self.layout, settings, capacity,
                                      trace_planner_factory(stream), self.dtype_name, poison=poison, record=record)
            except torch.cuda.OutOfMemoryError:
                if attempt:
                    raise ExecutorError(f"a cache of {capacity} experts does not fit in the free GPU memory") from None
                # runtimes nobody holds may still sit in reference cycles with their slots: free them
                gc.collect()
                torch.cuda.empty_cache()

    def run(self, settings: Settings, *, warmup: int | None = None, poison: bool = False,
            record: bool = False, groups: int | None = None) -> OffloadRuntime:
        """Execute the whole stream once with ``settings``; returns the runtime with its figures."""
        stream = self.stream(settings.batch_size, groups)
        model = self.synthetic(stream)
        if warmup is None:
            warmup = 3 if self.device.cuda else 1
        if warmup:
            scratch = settings.replace(speculation="none", cache_policy="lru", buffering="cache",
                                       cache=str(max(1, stream.max_needed())), compression="none")
            scratch_runtime = self.runtime(scratch, groups=groups)
            self._walk(stream, model, scratch_runtime, limit=warmup)
            scratch_runtime.close()
        runtime = self.runtime(settings, poison=poison, record=record, groups=groups)
        self._walk(stream, model, runtime)
        return runtime

    @torch.no_grad()
    def _walk(self, stream: RequestStream, model: SyntheticModel, runtime: OffloadRuntime, limit: int | None = None):
        pass_start = stream.pass_ls_start.tolist()
        ls_layer = stream.ls_layer.tolist()
        ls_tokens = stream.ls_tokens.tolist()
        ls_ctx = stream.ls_ctx.tolist()
        decode_of = stream.pass_decode.tolist()
        seqs_of = stream.pass_seqs.tolist()
        n = stream.n_passes if limit is None else min(limit, stream.n_passes)
        index, gate = model.index, model.gate
        blocks = model.blocks
        for p in range(n):
            decode = decode_of[p]
            a, b = pass_start[p], pass_start[p + 1]
            runtime.begin_pass(p, decode, seqs_of[p] if decode else ls_tokens[a])
            stat = runtime._pass
            x = model.start(ls_tokens[a])
            for ls in range(a, b):
                # host time per phase: where the host, not the GPU, is the bound, these are the step
                layer = ls_layer[ls]
                t0 = now()
                x = model.dense(layer, x, decode, ls_ctx[ls])
                t1 = now()
                model.route(layer, x)
                t2 = now()
                works = runtime.layer(ls)
                t3 = now()
                out = torch.zeros_like(x)
                for work in works:
                    idx = index[: work.tokens]
                    y = runtime.compute(work, x.index_select(0, idx))
                    out.index_add_(0, idx, y * gate[: work.tokens])
                x = x + out
                stat.expert_s += now() - t3
                stat.dense_s += t1 - t0
                stat.route_s += t2 - t1
                stat.blocks += blocks
                stat.experts += len(works)
            runtime.end_pass()


# ---- models ------------------------------------------------------------------------------

@dataclass
class ModelRun:
    summary: dict
    runtime: OffloadRuntime | None
    generated: list[list[int]] = field(default_factory=list)
    prompts: list[list[int]] = field(default_factory=list)


def prompt_ids(loaded, source: str = "builtin", limit: int | None = None, text_field: str = "text",
               max_tokens: int = 64) -> list[list[int]]:
    from pregate.tracer.inputs import read_prompts, tokenize
    from pregate.tracer.run import _eos_pad

    prompts = read_prompts(source, text_field, limit)
    eos, _ = _eos_pad(loaded.model)
    return tokenize(prompts, loaded.tokenizer, loaded.model.config.vocab_size, eos, max_tokens)


def _pad(loaded, ids: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    from pregate.tracer.run import _eos_pad

    _, pad = _eos_pad(loaded.model)
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        sl = slice(0, len(seq)) if loaded.adapter.encoder_decoder else slice(width - len(seq), width)
        input_ids[row, sl] = torch.tensor(seq, dtype=torch.long)
        mask[row, sl] = 1
    return input_ids.to(device), mask.to(device)


@torch.no_grad()
def generate(loaded, ids: list[list[int]], batch_size: int, max_new_tokens: int, device, on_batch=None,
             on_result=None) -> list[list[int]]:
    """Greedy generation in batches; the new tokens of every prompt (padding after EOS kept).

    ``on_result(group, first, input_ids, mask, result)`` sees each batch's padded input and
    ``generate``'s whole output (what ``--record-trace`` turns into rows)."""
    from pregate.tracer.run import _eos_pad

    eos, pad = _eos_pad(loaded.model)
    out = []
    for group, first in enumerate(range(0, len(ids), batch_size)):
        if on_batch is not None:
            on_batch(group)
        batch = ids[first : first + batch_size]
        input_ids, mask = _pad(loaded, batch, device)
        result = loaded.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                       do_sample=False, num_beams=1, use_cache=True, pad_token_id=pad,
                                       eos_token_id=eos)
        if on_result is not None:
            on_result(group, first, input_ids, mask, result)
        new = result[:, 1:] if loaded.adapter.encoder_decoder else result[:, input_ids.shape[1]:]
        out += new.cpu().tolist()
    return out


def load(model: str, random_init: bool, dtype: str, seed: int = 0, overrides: dict | None = None):
    from pregate.tracer.models import load_model

    loaded = load_model(model, random_init=random_init, seed=seed, dtype=dtype, overrides=overrides)
    set_impl = getattr(loaded.model, "set_experts_implementation", None)
    if set_impl is not None:  # the per-expert loop: the reference arithmetic the executor reproduces
        try:
            set_impl("eager")
        except Exception:  # pragma: no cover - older transformers
            pass
    return loaded


class OffloadedModel:
    """A loaded model whose experts live in a host store and run from device slots."""

    def __init__(self, model, settings: Settings, *, random_init: bool = False, device: str = "cpu",
                 dtype: str = "float32", seed: int = 0, poison: bool = False, record: bool = False,
                 overrides: dict | None = None, memory: float | None = None, memory_where: str = ""):
        """``model``: a name or path to load, or a LoadedModel (taken over: its experts move out)."""
        from pregate.executor.live import LivePlanner, LiveSession, expert_spec_for, live_layout

        self.device = Device(device)
        self.settings = settings
        self.loaded = load(model, random_init, dtype, seed, overrides) if isinstance(model, str) else model
        spec, kind = expert_spec_for(self.loaded)
        layout, offset = live_layout(self.loaded)
        self.layout = layout
        model_dtype = next(self.loaded.model.parameters()).dtype
        dtype_name = str(model_dtype).removeprefix("torch.")
        if settings.dtype and settings.dtype != dtype_name:
            raise ExecutorError(f"--dtype {settings.dtype} differs from the model's {dtype_name}")
        store = HostStore(spec, layout.n_objects, model_dtype, pin=self.device.cuda)
        self.session = LiveSession(self.loaded, spec, kind, layout, offset)
        self.session.extract(store, self.device.torch)
        total = layout.n_objects
        capacity = cache_capacity(settings, total, store.nbytes("full"), int(layout.experts.max()))
        if memory is None and self.device.cuda:
            memory, memory_where = self.device.memory_bytes(), self.device.description()
        if memory is not None:
            dense = sum(p.numel() * p.element_size() for p in self.loaded.model.parameters())
            check_fits(memory, dense, capacity, store.nbytes("full"), memory_where)

        def factory(cache, spec_policy, **kw):
            return LivePlanner(layout, cache, spec_policy, **kw)

        self.runtime = OffloadRuntime(self.device, store, layout, settings, capacity, factory, dtype_name,
                                      poison=poison, record=record)
        self.session.runtime = self.runtime
        self.session.planner = self.runtime.planner
        self._calls = 0
        self._rows = 1
        self._hooks = []
        self._timing = True
        model_ = self.loaded.model
        self._hooks.append(model_.register_forward_pre_hook(self._pre))
        self._hooks.append(model_.register_forward_hook(self._post))
        if self.loaded.adapter.encoder_decoder:
            enc = model_.get_encoder()
            self._hooks.append(enc.register_forward_pre_hook(self._pre_encoder))
            self._hooks.append(enc.register_forward_hook(self._post))

    def _pre(self, module, args, kwargs=None):
        if not self._timing:
            return
        decode = self.loaded.adapter.encoder_decoder or self._calls > 0
        self._calls += 1
        self.runtime.begin_pass(len(self.runtime.steps), decode, self._rows)

    def _pre_encoder(self, module, args, kwargs=None):
        if self._timing:
            self.runtime.begin_pass(len(self.runtime.steps), False, self._rows)

    def _post(self, module, args, output):
        if self._timing and self.runtime._pass is not None:
            self.runtime.end_pass()

    def generate(self, ids: list[list[int]], max_new_tokens: int, recording=None) -> list[list[int]]:
        """``recording``: a :class:`~pregate.executor.record.TraceRecording` that writes what the routers chose."""
        def on_batch(group):
            self.session.group = group
            self._calls = 0
            self._rows = len(ids[group * self.settings.batch_size : (group + 1) * self.settings.batch_size])
            if recording is not None:
                recording.begin()

        on_result = None
        if recording is not None:
            self.session.recording = recording

            def on_result(group, first, input_ids, mask, result):
                recording.end(group, first, input_ids, mask, result)

        try:
            return generate(self.loaded, ids, self.settings.batch_size, max_new_tokens, self.device.torch, on_batch,
                            on_result)
        finally:
            if recording is not None:
                recording.close()
                self.session.recording = None

    @torch.no_grad()
    def logits(self, input_ids: list[int], target: list[int]) -> torch.Tensor:
        """Teacher-forced logits over ``target`` (untimed)."""
        self._timing = False
        try:
            return forward_logits(self.loaded, input_ids, target, self.device.torch)
        finally:
            self._timing = True


@torch.no_grad()
def forward_logits(loaded, input_ids: list[int], target: list[int], device) -> torch.Tensor:
    """Logits at every position of ``target`` given ``input_ids`` (the prompt), teacher-forced."""
    model = loaded.model
    if loaded.adapter.encoder_decoder:
        start = model.config.decoder_start_token_id or 0
        dec = torch.tensor([[start] + target[:-1]], device=device)
        out = model(input_ids=torch.tensor([input_ids], device=device), decoder_input_ids=dec)
        return out.logits[0].float().cpu()
    ids = torch.tensor([input_ids + target[:-1]], device=device)
    out = model(ids)
    logits = out[0] if isinstance(out, tuple) else out.logits
    return logits[0, len(input_ids) - 1 :].float().cpu()


def compare_with_reference(run: "OffloadedModel", model: str, *, random_init: bool, dtype: str, seed: int,
                           ids: list[list[int]], generated: list[list[int]], max_new_tokens: int,
                           overrides: dict | None = None) -> dict:
    """Offloaded vs the all-resident model in full precision: tokens and logits on a text."""
    ref = load(model, random_init, dtype, seed, overrides)
    ref.model.to(run.device.torch)
    reference = generate(ref, ids, run.settings.batch_size, max_new_tokens, run.device.torch)
    same = sum(a == b for ga, gb in zip(generated, reference) for a, b in zip(ga, gb))
    total = sum(len(g) for g in reference)
    # teacher-forced on the first prompt and the reference continuation
    target = reference[0]
    ref_logits = forward_logits(ref, ids[0], target, run.device.torch)
    off_logits = run.logits(ids[0], target)
    rel = float((off_logits - ref_logits).norm() / ref_logits.norm().clamp(min=1e-30))
    agree = float((off_logits.argmax(-1) == ref_logits.argmax(-1)).float().mean())
    return {
        "reference": "all-resident model, full precision, same dtype",
        "identical_tokens": generated == reference,
        "generated_token_agreement": same / total if total else 1.0,
        "logits_relative_error": rel,
        "logits_max_abs_error": float((off_logits - ref_logits).abs().max()),
        "teacher_forced_token_agreement": agree,
        "reference_generated": reference,
    }


def execute_model(model: str, settings: Settings, *, random_init: bool = False, device: str = "cpu",
                  dtype: str = "float32", seed: int = 0, ids: list[list[int]] | None = None, source: str = "builtin",
                  limit: int | None = None, max_new_tokens: int = 16, poison: bool = False, record: bool = False,
                  overrides: dict | None = None, memory: float | None = None, memory_where: str = "",
                  compare: bool = False, record_trace: str | None = None, record_overwrite: bool = False) -> ModelRun:
    """``record_trace``: also write the routing the run saw as a trace in that folder (see executor/record.py)."""
    recording = None
    loaded = model
    if record_trace is not None:
        from pregate.executor.record import TraceRecording

        loaded = load(model, random_init, dtype, seed, overrides)
        recording = TraceRecording(loaded, record_trace, source=source, limit=limit, max_new_tokens=max_new_tokens,
                                   batch_size=settings.batch_size, seed=seed, dtype=dtype, device=device,
                                   random_init=random_init, overwrite=record_overwrite)
    run = OffloadedModel(loaded, settings, random_init=random_init, device=device, dtype=dtype, seed=seed,
                         poison=poison, record=record, overrides=overrides, memory=memory, memory_where=memory_where)
    if ids is None:
        ids = prompt_ids(run.loaded, source, limit)
    generated = run.generate(ids, max_new_tokens, recording)
    summary = run.runtime.summary()
    summary.update(model=model, generated=generated)
    if recording is not None:
        summary["recorded_trace"] = recording.summary
    if compare:
        summary["compare"] = compare_with_reference(run, model, random_init=random_init, dtype=dtype, seed=seed,
                                                    ids=ids, generated=generated, max_new_tokens=max_new_tokens,
                                                    overrides=overrides)
    return ModelRun(summary, run.runtime, generated, ids)
