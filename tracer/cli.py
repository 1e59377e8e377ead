"""``pregate trace``: record routing from a model into a trace folder."""

HELP = "record per-token routing (and the pre-gating 'ahead' signal) of an MoE model into a trace"
DESCRIPTION = """Run greedy generation on a Mixture-of-Experts model and record, for every
token and MoE layer, the experts its router chose (with their gate
probabilities and capacity drops) and what the routers of the next J MoE layers
would pick from this layer's hidden state (the pre-gating signal).

The model is a local checkpoint folder, a model id in the local Hugging Face
cache (nothing is downloaded), or, with --random-init, any known shape with
seeded random weights (see 'pregate models').

examples:
  pregate trace --model google/switch-base-8 --random-init --out runs/sb8
  pregate trace --model /data/ckpt/switch-base-8 --input prompts.txt --out runs/sb8-real
  pregate trace --model tiny-mixtral --random-init --input data.jsonl --text-field prompt --out runs/mx
  pregate trace --model google/switch-base-8 --random-init --out runs/sb8 --resume   # after an interruption
  pregate trace --model pregate-moe-tiny --random-init -o runs/tiny --limit 8 --quiet"""


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="local checkpoint folder, cached model id, or known shape name")
    p.add_argument("-o", "--out", required=True, help="trace folder to write (parts part-00000.parquet, ...)")
    p.add_argument("--input", default="builtin",
                   help="prompts: a .txt file (one per line), a .jsonl file, or 'builtin' (32 varied prompts; default)")
    p.add_argument("--text-field", default="text", help="JSON Lines field holding the prompt (default: text)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    p.add_argument("--random-init", action="store_true", help="build the model's exact shape with seeded random weights")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate per prompt (default: 32)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate call and per trace part (default: 8)")
    p.add_argument("--max-prompt-tokens", type=int, default=128, help="truncate prompts to this many tokens (default: 128)")
    p.add_argument("--ahead", type=int, default=3, help="later MoE layers to predict per row, J (default: 3; 0 = none)")
    p.add_argument("--ahead-width", type=int, default=None,
                   help="experts kept per ahead entry, best first (default: the model's top-k; 2 on a top-1 "
                        "model also records each later router's runner-up, at about 2 more bytes per row)")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights (default: 0)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype (default: float32)")
    p.add_argument("--device", default="cpu", help="torch device to run on: cpu or cuda (default: cpu)")
    p.add_argument("--tokenizer", default=None, help="local tokenizer folder (default: the checkpoint's, else byte ids)")
    p.add_argument("--prob-bits", type=int, default=10,
                   help="mantissa bits kept of stored probabilities, 1-23 (default: 10, float16 precision; 23 = exact)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow code shipped with a checkpoint to run (off by default)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue an interrupted trace in --out, skipping finished parts")
    g.add_argument("--overwrite", action="store_true", help="replace a trace already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from pathlib import Path

    from pregate.traces.info import describe, format_summary
    from pregate.tracer.run import TraceSettings, trace

    settings = TraceSettings(
        model=args.model, out=Path(args.out), input=args.input, random_init=args.random_init,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, max_prompt_tokens=args.max_prompt_tokens,
        limit=args.limit, text_field=args.text_field, seed=args.seed, dtype=args.dtype, device=args.device,
        ahead=args.ahead, ahead_width=args.ahead_width, prob_bits=args.prob_bits, tokenizer=args.tokenizer,
        trust_remote_code=args.trust_remote_code, resume=args.resume, overwrite=args.overwrite,
        progress=not args.quiet,
    )
    out = trace(settings)
    summary = describe(out)  # reads the finished trace back, so --quiet fails exactly when the summary would
    if not args.quiet:
        print(format_summary(summary))
    return 0
