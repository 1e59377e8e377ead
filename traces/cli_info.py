"""``pregate trace-info``: describe a trace."""

HELP = "describe a trace: model, stacks, tokens by phase, rows, size on disk"
DESCRIPTION = """Describe a trace folder: the model it was recorded from, its stacks and MoE
layers, experts and top-k, how many sequences and tokens (by stack and phase),
rows, size on disk and bytes per row.

example:
  pregate trace-info traces/samples/switch-base-8-random
  pregate trace-info runs/my-trace --json > info.json"""


def add_arguments(parser) -> None:
    parser.add_argument("trace", help="trace folder (or a single part file)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of text")


def run(args) -> int:
    import json

    from pregate.traces.info import describe, format_summary

    info = describe(args.trace)
    print(json.dumps(info, indent=2) if args.json else format_summary(info))
    return 0
