"""Recording the routing an offloaded run saw, as a regular trace (``pregate execute --record-trace``).

A model whose experts do not fit the GPU cannot be traced by ``pregate trace``
(which holds every weight on the device), but the executor runs it with its
experts in host memory. Its routers are the model's own modules and run
normally, so the tracer's :class:`~pregate.tracer.capture.RoutingRecorder`
hooks them exactly as ``pregate trace`` does, and the tracer's own row builder
turns each batch into a trace part: the same rows, the same ``ahead``
pre-gating signal (computed from the live routers after each batch), the same
metadata. The trace's metadata is taken before the experts move out, while the
model still holds all of its weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pregate.traces import TraceWriter
from pregate.traces.schema import DEFAULT_AHEAD
from pregate.tracer.capture import RoutingRecorder
from pregate.tracer.inputs import BYTE_TOKENIZER, read_prompts
from pregate.tracer.run import BatchTracer, TraceSettings, make_meta

# pregate execute tokenises prompts to at most this many tokens (executor/run.py prompt_ids).
EXECUTE_PROMPT_TOKENS = 64


class TraceRecording:
    """One trace part per generated batch, from router hooks on the live model."""

    def __init__(self, loaded, out: str | Path, *, source: str, limit: int | None, max_new_tokens: int,
                 batch_size: int, seed: int, dtype: str, device: str, random_init: bool,
                 ahead: int = DEFAULT_AHEAD, overwrite: bool = False):
        self.loaded = loaded
        settings = TraceSettings(model=loaded.model_id, out=Path(out), input=source, random_init=random_init,
                                 max_new_tokens=max_new_tokens, batch_size=batch_size,
                                 max_prompt_tokens=EXECUTE_PROMPT_TOKENS, limit=limit, seed=seed, dtype=dtype,
                                 device=device, ahead=ahead, progress=False, overwrite=overwrite)
        prompts = read_prompts(source, "text", limit)
        tokenizer = (getattr(loaded.tokenizer, "name_or_path", "") or "tokenizer") if loaded.tokenizer is not None \
            else BYTE_TOKENIZER
        self.meta = make_meta(loaded, settings, prompts, tokenizer)  # every weight still in the model
        self.meta.extra["recorded_by"] = "pregate execute --record-trace"
        self.writer = TraceWriter(settings.out, self.meta, overwrite=overwrite)
        self.tracer = BatchTracer(loaded, settings, self.meta)
        self.recorder = RoutingRecorder(loaded.adapter)
        self.out = settings.out
        self.parts = 0
        self.rows = 0

    def paused(self):
        """Router calls made for the live planner's own pre-gating are not the model's routing."""
        return self.recorder.paused()

    def begin(self) -> None:
        self.recorder.reset()
        self.recorder.__enter__()

    def end(self, index: int, first_seq: int, input_ids: torch.Tensor, mask: torch.Tensor,
            result: torch.Tensor) -> None:
        self.recorder.__exit__(None, None, None)
        table = self.tracer.rows(self.recorder, first_seq, input_ids.cpu().numpy(), mask.cpu().numpy(),
                                 result.cpu().numpy())
        self.writer.write(index, table)
        self.recorder.reset()
        self.parts += 1
        self.rows += table.num_rows

    def close(self) -> None:
        self.recorder.__exit__(None, None, None)

    @property
    def summary(self) -> dict:
        return {"out": str(self.out), "parts": self.parts, "rows": self.rows,
                "ahead_distance": int(self.meta.ahead_distance), "model_id": self.meta.model_id}


__all__ = ["TraceRecording"]
