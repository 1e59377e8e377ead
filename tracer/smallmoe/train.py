"""Training the small MoE model: deterministic, resumable, with a progress bar.

Batches are drawn from a generator seeded by (seed, step), so a resumed run
sees exactly the batches an uninterrupted one would, without saving generator
state. Checkpoints (model, optimiser, step, loss history) are written
atomically every ``checkpoint_every`` steps; ``resume`` continues from the
last one. The finished model is saved as safetensors plus a JSON config and
the tokenizer, loadable by ``pregate trace --model DIR``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pregate.traces.errors import PregateError
from pregate.tracer.smallmoe.corpus import heldout_prompts, read_corpus, train_tokenizer
from pregate.tracer.smallmoe.model import PRESETS, SmallMoEModel
from pregate.tracer.smallmoe.settings import TrainSettings

CHECKPOINT = "checkpoint.pt"
HELDOUT = "heldout.jsonl"  # prompts from held-out text, for tracing the trained model
LOG = "train_log.json"


def _encode(tokenizer, docs) -> np.ndarray:
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for enc in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(eos)
    return np.asarray(ids, dtype=np.int32)


def _batch(data: np.ndarray, seed: int, step: int, batch: int, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(data) - seq - 1, size=batch)
    windows = np.stack([data[s : s + seq + 1] for s in starts]).astype(np.int64)
    t = torch.from_numpy(windows)
    return t[:, :-1], t[:, 1:]


def _lr(settings: TrainSettings, step: int) -> float:
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    return settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@torch.no_grad()
def evaluate(model: SmallMoEModel, data: np.ndarray, windows: int, seq: int) -> float:
    """Mean next-token loss over fixed, evenly spaced windows of held-out text."""
    model.eval()
    starts = np.linspace(0, len(data) - seq - 2, num=windows).astype(np.int64)
    losses = []
    for chunk in np.array_split(starts, max(1, windows // 16)):
        x = torch.from_numpy(np.stack([data[s : s + seq] for s in chunk]).astype(np.int64))
        y = torch.from_numpy(np.stack([data[s + 1 : s + seq + 1] for s in chunk]).astype(np.int64))
        logits, _ = model(x)
        losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item())
    model.train()
    return float(np.mean(losses))


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_heldout_prompts(docs, path: Path) -> None:
    """Snippets of text the model never trained on, one JSON record each ({"text": ...})."""
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in heldout_prompts(docs)))


def train(settings: TrainSettings) -> dict:
    """Train (or resume) and save the model; returns the loss log."""
    if settings.preset not in PRESETS:
        raise PregateError(f"unknown preset '{settings.preset}' (choose from {', '.join(PRESETS)})")
    for name, least in (("steps", 1), ("batch_size", 1), ("seq_len", 2), ("eval_every", 1), ("eval_windows", 1),
                        ("checkpoint_every", 1)):
        if getattr(settings, name) < least:  # checked before the corpus is read and the tokenizer trained
            flag = f"--{name.replace('_', '-')}" if name in ("steps", "batch_size", "seq_len") else name
            raise PregateError(f"{flag} must be at least {least}, got {getattr(settings, name)}")
    if not settings.lr > 0:
        raise PregateError(f"--lr must be positive, got {settings.lr}")
    out = Path(settings.out)
    ckpt_path = out / CHECKPOINT
    if settings.resume and (out / LOG).is_file() and not ckpt_path.is_file():
        raise PregateError(f"the training in {out} already finished; its model is in that folder")
    if out.exists() and any(out.iterdir()) and not settings.resume:
        raise PregateError(f"{out} is not empty; pass --resume to continue that training or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    if settings.threads < 0:
        raise PregateError(f"--threads must be 0 (torch's default) or more, not {settings.threads}")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)

    docs = read_corpus(settings.corpus)
    tokenizer_dir = out / "tokenizer"
    cfg = PRESETS[settings.preset]
    if (tokenizer_dir / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir))
    else:
        tokenizer = train_tokenizer(docs, cfg.vocab_size)
        tokenizer.save_pretrained(str(tokenizer_dir))
    cfg = replace(cfg, vocab_size=len(tokenizer), max_seq_len=max(cfg.max_seq_len, settings.seq_len),
                  pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id,
                  extra={"corpus": [str(c) for c in settings.corpus] or ["python-stdlib"], "preset": settings.preset})
    train_ids = _encode(tokenizer, [d.text for d in docs if not d.held_out])
    valid_ids = _encode(tokenizer, [d.text for d in docs if d.held_out])
    if len(train_ids) < settings.seq_len * 4 or len(valid_ids) < settings.seq_len + 2:
        raise PregateError("the corpus is too small for this sequence length; add text or lower --seq-len")

    model = SmallMoEModel(cfg).to(settings.device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr, betas=(0.9, 0.95),
    )
    log = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
           "train_tokens": int(len(train_ids)), "valid_tokens": int(len(valid_ids)),
           "params": sum(p.numel() for p in model.parameters()), "loss": [], "valid": []}
    start_step = 0
    if settings.resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        start_step, log = state["step"], state["log"]
    model.train()

    from tqdm.auto import tqdm

    bar = tqdm(total=settings.steps, initial=start_step, desc="training", unit="step", disable=not settings.progress)
    started = time.perf_counter()
    for step in range(start_step, settings.steps):
        x, y = _batch(train_ids, settings.seed, step, settings.batch_size, settings.seq_len)
        x, y = x.to(settings.device), y.to(settings.device)
        for group in optim.param_groups:
            group["lr"] = _lr(settings, step)
        logits, _ = model(x)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss = ce + cfg.aux_loss_coef * model.aux_loss()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        log["loss"].append([step + 1, round(ce.item(), 5)])
        done = step + 1
        if done % settings.eval_every == 0 or done == settings.steps:
            log["valid"].append([done, round(evaluate(model, valid_ids, settings.eval_windows, settings.seq_len), 5)])
        bar.set_postfix(loss=f"{ce.item():.3f}", valid=f"{log['valid'][-1][1]:.3f}" if log["valid"] else "-")
        bar.update(1)
        if done % settings.checkpoint_every == 0 and done < settings.steps:
            _save_atomic({"model": model.state_dict(), "optim": optim.state_dict(), "step": done, "log": log}, ckpt_path)
    bar.close()
    log["seconds_this_run"] = round(time.perf_counter() - started, 1)
    model.eval()
    model.save(out, tokenizer)
    (out / LOG).write_text(json.dumps(log) + "\n")
    write_heldout_prompts(docs, out / HELDOUT)
    if ckpt_path.exists():
        ckpt_path.unlink()
    return log
