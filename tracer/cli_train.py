"""``pregate train``: train pregate's own small MoE model."""

HELP = "train pregate's own small MoE language model (tiny: minutes on a laptop CPU)"
DESCRIPTION = """Train a decoder-only Switch-style MoE language model (top-1 routing, load
balancing loss) on text you name, or by default on the Python standard
library's own modules (present on every machine, nothing to download). A
byte-level BPE tokenizer is trained on the same text. One file in ten (by name
hash) is held out for validation loss and for tracing.

Presets: 'micro' (2 MoE layers x 4 experts at width 32: trains in seconds; for
tests, not results), 'tiny' (3.8M parameters, 6 MoE layers x 8 experts, top-1: switch-base's
decoder topology; trains on two CPU cores in minutes), 'tiny-64' (the same with
64 experts per layer: switch-base-64's decoder topology), 'mixtral-topo' (4.9M
parameters, 32 MoE layers x 8 experts, top-2: Mixtral-8x7B's routing topology
at width 64; its defaults, one torch thread and 200 steps of 8 x 128 tokens,
train it in under 20 minutes on two shared CPU cores) and 'small-140m' (142M
parameters, for a GPU). Train the small ones with --threads 1 on a shared
machine: two threads fighting other jobs are slower.

The output folder holds model.safetensors, config.json, the tokenizer and
train_log.json and heldout.jsonl (prompts from held-out text);
trace it with 'pregate trace --model DIR'. Training is
deterministic for a seed on the CPU and resumes from its last checkpoint.

examples:
  pregate train --preset tiny --out runs/moe-tiny
  pregate train --preset tiny --corpus ~/notes ~/src/project --steps 3000 --out runs/moe-notes
  pregate train --preset tiny --out runs/moe-tiny --resume
  pregate train --preset mixtral-topo --out runs/moe-mixtral-topo
  pregate train --preset tiny-64 --steps 500 --threads 1 --out runs/moe-tiny-64"""


def _default(d, name: str) -> str:
    """'(default: X)' plus the presets that bring their own value."""
    from pregate.tracer.smallmoe.settings import PRESET_TRAINING

    own = [f"{preset}: {values[name]}" for preset, values in PRESET_TRAINING.items() if name in values]
    return f"(default: {getattr(d, name)}" + (f"; {', '.join(own)}" if own else "") + ")"


def add_arguments(p) -> None:
    from pregate.tracer.smallmoe.settings import TrainSettings

    d = TrainSettings()
    p.add_argument("--preset", default=d.preset, help="model size: micro, tiny, tiny-64, mixtral-topo or small-140m (default: tiny)")
    p.add_argument("--corpus", nargs="*", default=[], help="text files or folders (default: the Python standard library)")
    p.add_argument("-o", "--out", required=True, help="output folder for the model, tokenizer and log")
    p.add_argument("--steps", type=int, default=None, help=f"optimiser steps {_default(d, 'steps')}")
    p.add_argument("--batch-size", type=int, default=None, help=f"sequences per step {_default(d, 'batch_size')}")
    p.add_argument("--seq-len", type=int, default=None, help=f"tokens per sequence {_default(d, 'seq_len')}")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default: {d.lr})")
    p.add_argument("--seed", type=int, default=d.seed, help="seed for weights and batches (default: 0)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads; 0: torch's default, one per core "
                        f"{_default(d, 'threads')}; the result is deterministic for a thread count")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from pathlib import Path

    from pregate.tracer.smallmoe.settings import preset_settings
    from pregate.tracer.smallmoe.train import train

    log = train(preset_settings(
        args.preset, out=Path(args.out), corpus=args.corpus, steps=args.steps, batch_size=args.batch_size,
        seq_len=args.seq_len, lr=args.lr, seed=args.seed, device=args.device, threads=args.threads,
        resume=args.resume, progress=not args.quiet,
    ))
    first, last = log["loss"][0][1], log["loss"][-1][1]
    valid = log["valid"][-1][1] if log["valid"] else float("nan")
    print(f"trained {log['params'] / 1e6:.1f}M parameters on {log['train_tokens']} tokens: "
          f"train loss {first:.3f} -> {last:.3f}, held-out loss {valid:.3f}; model in {args.out}")
    return 0
