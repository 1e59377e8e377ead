"""``pregate validate-trace``: check a trace against the format's rules."""

HELP = "check a trace against the format's rules; one line names the first violation"
DESCRIPTION = """Check every part of a trace: the columns and their types, the metadata,
expert ids below the experts per layer, layers below the MoE layers of their
stack, probabilities in [0, 1], list lengths equal to top-k (and to J for
'ahead'), and no duplicate (seq, stack, step, pos, layer) key.

On a violation it prints one line naming the file, the column and the first
offending row (0-based within that file) and exits with status 2.

examples:
  pregate validate-trace runs/my-trace
  pregate validate-trace runs/my-trace/part-00003.parquet --quiet && echo fine"""


def add_arguments(parser) -> None:
    from pregate.traces.cliargs import add_quiet

    parser.add_argument("trace", help="trace folder (or a single part file)")
    add_quiet(parser)


def run(args) -> int:
    from pregate.traces.validate import validate_trace

    trace = validate_trace(args.trace)
    print(f"ok: {trace.path} ({trace.num_rows} rows in {len(trace.files)} part(s)) follows trace format v{trace.meta.format_version}")
    return 0
