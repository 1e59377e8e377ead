"""``pregate demo``: the main job on built-in data, as a first run on a new machine.

It records a short trace of a random-init switch-base-8 (the real shape, seeded
weights) on the built-in prompts, validates it and describes it. As the
simulator and the reports arrive, the demo grows into a policy sweep over the
shipped sample trace.
"""

HELP = "run the main job on built-in data: trace a random-init switch-base-8 and describe the trace"
DESCRIPTION = __doc__


def add_arguments(parser) -> None:
    parser.add_argument("-o", "--out", default="pregate-demo", help="output folder (default: ./pregate-demo)")
    parser.add_argument("--prompts", type=int, default=8, help="built-in prompts to trace (default: 8)")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="tokens to generate per prompt (default: 8)")


def run(args) -> int:
    from pathlib import Path

    from pregate.traces.info import describe, format_summary
    from pregate.traces.validate import validate_trace
    from pregate.tracer.run import TraceSettings, trace

    out = Path(args.out) / "trace-switch-base-8"
    print("pregate demo: tracing google/switch-base-8 (random weights, real shape) on the built-in prompts")
    trace(TraceSettings(model="google/switch-base-8", out=out, random_init=True, limit=args.prompts,
                        max_new_tokens=args.max_new_tokens, batch_size=4, overwrite=True))
    validate_trace(out)
    print(format_summary(describe(out)))
    print(f"\nthe trace validates; open it with polars: pl.scan_parquet('{out}/part-*.parquet')")
    return 0
