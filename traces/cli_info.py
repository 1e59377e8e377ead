"""``pregate trace-info``: describe a trace."""

HELP = "describe a trace: model, stacks, tokens by phase, rows, size on disk"
DESCRIPTION = """Describe a trace folder: the model it was recorded from, its stacks and MoE
layers, experts and top-k, how many sequences and tokens (by stack and phase),
rows, size on disk and bytes per row.

examples:
  pregate trace-info traces/samples/switch-base-8-random
  pregate trace-info runs/my-trace --json > info.json"""


def add_arguments(parser) -> None:
    parser.add_argument("trace", help="trace folder (or a single part file)")
    from pregate.traces.cliargs import add_json, add_quiet

    add_json(parser, "the summary")
    add_quiet(parser)


def run(args) -> int:
    import json

    from pregate.traces.info import describe, format_summary

    from pregate.traces.cliargs import emit_json, json_to_stdout

    info = describe(args.trace)
    if not json_to_stdout(args):
        print(format_summary(info))
    emit_json(args, json.dumps(info, indent=2))
    return 0
