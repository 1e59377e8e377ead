"""Training text for the small MoE: the user's files, or a default every machine has.

The default corpus is the Python standard library's own top-level modules
(source and docstrings): present wherever Python is, nothing to download.
Files are split into training and held-out sets by a hash of their name, so
the split does not depend on the order files are found in, and the held-out
text (used for validation loss and for the sample trace) is never trained on.
"""

from __future__ import annotations

import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

from pregate.traces.errors import PregateError

TEXT_SUFFIXES = {".py", ".txt", ".md", ".rst", ".json", ".toml", ".cfg", ".html", ".c", ".h"}
HELD_OUT_EVERY = 10  # one file in ten (by name hash) is held out


@dataclass
class Document:
    name: str  # a path relative to the corpus argument it came from: the same on every machine
    text: str
    held_out: bool = False


def _hash(name: str) -> int:
    return zlib.crc32(name.encode())


def default_corpus_paths() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return sorted(stdlib.glob("*.py"))


def read_corpus(paths: list[str | Path] | None) -> list[Document]:
    """Documents from files and folders (recursively, text files only), sorted by name.

    One file in ten, by a hash of its name, is held out; a corpus where the
    hash picks none holds out the file with the smallest hash, so any corpus of
    two or more files has both parts.
    """
    named: list[tuple[str, Path]] = []
    if not paths:
        named = [(f.name, f) for f in default_corpus_paths()]
    else:
        for raw in paths:
            path = Path(raw)
            if path.is_dir():
                named += [(f"{path.name}/{p.relative_to(path).as_posix()}", p)
                          for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES]
            elif path.is_file():
                named.append((path.name, path))
            else:
                raise PregateError(f"corpus path not found: {raw}")
    docs = []
    for name, file in sorted(dict(named).items()):
        try:
            text = file.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary or unreadable files are not text to learn from
        if text.strip():
            docs.append(Document(name, text, _hash(name) % HELD_OUT_EVERY == 0))
    if len(docs) < 2:
        raise PregateError("the corpus needs at least two readable UTF-8 text files (one is held out for validation)")
    if not any(d.held_out for d in docs):
        min(docs, key=lambda d: _hash(d.name)).held_out = True
    if all(d.held_out for d in docs):
        max(docs, key=lambda d: _hash(d.name)).held_out = False
    return docs


def heldout_prompts(docs: list[Document], count: int = 64, chars: int = 320) -> list[str]:
    """Evenly spaced snippets of held-out text, cut at line ends: prompts for tracing.

    Deterministic for the same corpus, so the sample trace can be reproduced.
    """
    chunks = []
    for doc in sorted((d for d in docs if d.held_out), key=lambda d: d.name):
        lines, size = [], 0
        for line in doc.text.splitlines():
            lines.append(line)
            size += len(line) + 1
            if size >= chars:
                chunk = "\n".join(lines).strip()
                if len(chunk) >= chars // 2:
                    chunks.append(chunk)
                lines, size = [], 0
    if not chunks:
        return []
    step = max(1, len(chunks) // count)
    return chunks[::step][:count]


def train_tokenizer(docs: list[Document], vocab_size: int):
    """A byte-level BPE tokenizer trained on the training documents (deterministic for the same input)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((d.text for d in docs if not d.held_out), trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
