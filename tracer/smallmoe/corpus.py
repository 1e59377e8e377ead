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

from pregate.errors import PregateError

TEXT_SUFFIXES = {".py", ".txt", ".md", ".rst", ".json", ".toml", ".cfg", ".html", ".c", ".h"}
HELD_OUT_EVERY = 10  # one file in ten (by name hash) is held out


@dataclass
class Document:
    name: str
    text: str

    @property
    def held_out(self) -> bool:
        return zlib.crc32(self.name.encode()) % HELD_OUT_EVERY == 0


def default_corpus_paths() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return sorted(stdlib.glob("*.py"))


def read_corpus(paths: list[str | Path] | None) -> list[Document]:
    """Documents from files and folders (recursively, text files only), sorted by path."""
    if not paths:
        files = default_corpus_paths()
        root = files[0].parent if files else Path(".")
    else:
        files = []
        for raw in paths:
            path = Path(raw)
            if path.is_dir():
                files += [p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES]
            elif path.is_file():
                files.append(path)
            else:
                raise PregateError(f"corpus path not found: {raw}")
        files = sorted(set(files))
        root = None
    docs = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary or unreadable files are not text to learn from
        if text.strip():
            name = file.name if root is not None else str(file)
            docs.append(Document(name, text))
    if not docs:
        raise PregateError("the corpus holds no readable UTF-8 text files")
    if not any(d.held_out for d in docs) or all(d.held_out for d in docs):
        raise PregateError(f"the corpus needs at least {HELD_OUT_EVERY} files so that some are held out for validation")
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
