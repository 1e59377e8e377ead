"""``pregate synth``: write a synthetic trace of a named or explicit shape."""

HELP = "write a synthetic trace: a real model's shape and routing statistics (--like) or any shape"
DESCRIPTION = """Write a synthetic routing trace in seconds (vectorised; about 10M rows in under
30 s for the Mixtral shape). With --like, the shape (layers, experts, top-k,
expert bytes) is a real model's and the routing statistics (expert-load skew,
layer-to-layer transitions, consecutive-token overlap, LRU hit curve) are tuned
to match those measured on its real traces; 'pregate trace-stats' shows them.
Without --like, give the shape with --shape or --layers/--experts/--top-k.

The trace has no 'ahead' column (like an imported trace) unless
--ahead-accuracy is given: each entry of ahead[j] then names the expert layer
l+j really chose with that probability (one value, or one per distance j,
comma separated), else an expert that layer did not choose.

examples:
  pregate synth --like mixtral-8x7b -o runs/mixtral-like
  pregate synth --like flame-moe-290m --seqs 64 --tokens 64 -o runs/flame-like
  pregate synth --like mixtral-8x7b --seqs 1250 --tokens 250 --ahead-accuracy 0.8,0.6,0.5 -o runs/big
  pregate synth --shape 12x8x1 --seqs 16 --tokens 64 -o runs/sb8-shaped"""


def add_arguments(parser) -> None:
    from pregate.simulator.synthetic import PRESETS

    parser.add_argument("-o", "--out", required=True, help="trace folder to write (a new or empty folder, "
                                                           "or an existing trace with --overwrite)")
    parser.add_argument("--like", choices=sorted(PRESETS), help="a real model's shape and routing statistics")
    parser.add_argument("--shape", help="LAYERSxEXPERTSxTOPK, e.g. 32x8x2 (instead of --like)")
    parser.add_argument("--layers", type=int, help="MoE layers (with --experts and --top-k, instead of --shape)")
    parser.add_argument("--experts", type=int, help="experts per MoE layer")
    parser.add_argument("--top-k", type=int, help="experts each token is routed to")
    parser.add_argument("--seqs", type=int, help="sequences (default: the preset's tuned size, else 16)")
    parser.add_argument("--tokens", type=int, help="decode tokens per sequence (default: the preset's, else 64)")
    parser.add_argument("--prompt-tokens", type=int, default=0, help="prompt tokens per sequence, routed as one "
                                                                       "prefill pass (default 0: decode only)")
    parser.add_argument("--ahead-accuracy", help="add an 'ahead' column with this accuracy (0..1, or one per "
                                                 "distance j=1..3, comma separated)")
    parser.add_argument("--seed", type=int, default=0, help="seed; same arguments and seed give identical traces")
    parser.add_argument("--overwrite", action="store_true", help="replace the trace already in --out")
    from pregate.traces.cliargs import add_quiet

    add_quiet(parser)


def _accuracy(text):
    from pregate.traces.errors import TraceError

    if text is None:
        return None
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise TraceError(f"--ahead-accuracy '{text}': give a number 0..1 or comma-separated numbers") from None
    if not values or len(values) > 3 or any(not 0.0 <= v <= 1.0 for v in values):
        raise TraceError(f"--ahead-accuracy '{text}': give one to three numbers within 0..1")
    return values[0] if len(values) == 1 else values + [values[-1]] * (3 - len(values))


def _shape(args):
    from pregate.traces.errors import TraceError

    if args.shape:
        try:
            layers, experts, top_k = (int(v) for v in args.shape.lower().split("x"))
        except ValueError:
            raise TraceError(f"--shape '{args.shape}': write LAYERSxEXPERTSxTOPK, e.g. 32x8x2") from None
    else:
        layers, experts, top_k = args.layers, args.experts, args.top_k
        if None in (layers, experts, top_k):
            raise TraceError("give --like NAME, --shape LxExK, or all of --layers, --experts and --top-k")
    if min(layers, experts, top_k) < 1 or top_k > experts:
        raise TraceError(f"shape {layers}x{experts}x{top_k}: need positive numbers and top-k <= experts")
    return layers, experts, top_k


def run(args) -> int:
    import time
    from pathlib import Path

    from pregate.simulator.synthetic import Knobs, generate, like_trace, synthetic_meta
    from pregate.traces import open_trace
    from pregate.traces.errors import TraceError

    accuracy = _accuracy(args.ahead_accuracy)
    for name in ("seqs", "tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise TraceError(f"--{name} must be at least 1, got {value}")
    if args.prompt_tokens < 0:
        raise TraceError("--prompt-tokens must not be negative")
    out = Path(args.out)
    if out.is_file():
        raise TraceError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise TraceError(f"{out} is not empty; pass --overwrite to replace what it holds, or choose another -o")
    start = time.perf_counter()
    if args.like:
        if args.shape or args.layers or args.experts or args.top_k:
            raise TraceError("--like sets the shape: drop --shape/--layers/--experts/--top-k, or drop --like")
        path = like_trace(args.out, args.like, seqs=args.seqs, decode_tokens=args.tokens,
                          prompt_tokens=args.prompt_tokens, seed=args.seed, ahead_accuracy=accuracy)
    else:
        layers, experts, top_k = _shape(args)
        meta = synthetic_meta(layers, experts, top_k, 3 if accuracy is not None else 0)
        path = generate(args.out, meta, seqs=args.seqs or 16, prompt_len=args.prompt_tokens,
                        new_tokens=args.tokens or 64, knobs=Knobs(), seed=args.seed, ahead_accuracy=accuracy)
    trace = open_trace(path)
    print(f"wrote {trace.num_rows} rows to {path} in {time.perf_counter() - start:.1f} s "
          f"({trace.meta.model_id}; check the statistics with 'pregate trace-stats {path}')")
    return 0
