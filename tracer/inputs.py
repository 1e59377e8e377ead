"""Prompts for tracing: from a text file, JSON Lines, or the built-in set; and their token ids.

Without a tokenizer (a random-init model has none) prompts become byte ids:
each UTF-8 byte b maps to ``3 + b % (vocab - 3)`` and the model's EOS id is
appended. Ids 0-2 stay free for the usual pad/BOS/EOS. This is deterministic
and needs no files; it is documented in the trace metadata as ``tokenizer``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from pregate.traces.errors import PregateError

BUILTIN = "builtin"
BYTE_TOKENIZER = "utf8-bytes+3"


def read_prompts(source: str, text_field: str = "text", limit: int | None = None) -> list[str]:
    """Prompts from ``builtin``, a ``.jsonl`` file (field ``text_field``) or a text file (one per line)."""
    if source == BUILTIN:
        text = resources.files("pregate.tracer").joinpath("prompts/builtin.txt").read_text(encoding="utf-8")
        prompts = [line.replace("\\n", "\n") for line in text.splitlines() if line.strip()]
    else:
        path = Path(source)
        if not path.is_file():
            raise PregateError(f"input file not found: {source} (give a .txt with one prompt per line, a .jsonl, or 'builtin')")
        if path.suffix in (".jsonl", ".json"):
            prompts = []
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    raise PregateError(f"{source}:{number}: not valid JSON") from None
                if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                    raise PregateError(f"{source}:{number}: no string field '{text_field}' (choose it with --text-field)")
                prompts.append(record[text_field])
        else:
            prompts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if limit is not None:
        prompts = prompts[:limit]
    if not prompts:
        raise PregateError(f"no prompts in {source}")
    return prompts


def byte_ids(text: str, vocab_size: int, eos_id: int | None, max_tokens: int) -> list[int]:
    ids = [3 + b % (vocab_size - 3) for b in text.encode("utf-8")][: max_tokens - (eos_id is not None)]
    return ids + ([eos_id] if eos_id is not None else [])


def tokenize(prompts: list[str], tokenizer, vocab_size: int, eos_id: int | None, max_tokens: int) -> list[list[int]]:
    """Token ids per prompt, at most ``max_tokens`` each."""
    if tokenizer is None:
        return [byte_ids(p, vocab_size, eos_id, max_tokens) for p in prompts]
    return [tokenizer(p, truncation=True, max_length=max_tokens)["input_ids"] for p in prompts]
