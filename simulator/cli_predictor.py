"""``pregate predictor``: train the learned expert predictor on a trace, or score a saved one."""

HELP = "train the learned expert predictor (for --speculation learned) or score one on a trace"
DESCRIPTION = """train: fit a softmax regression per target distance j = 1..3 (and target layer)
on a seeded training split of the trace's sequences, save it (a versioned .npz
file, loaded without pickle) and print its accuracy on the other sequences
next to the 'transition' and 'eam' policies and the trace's 'ahead' signal.
Features of each candidate expert: static tables from the training split
(after this token's layer-l top-1 and set, and its layer l-1 top-1), online
tables counted over the tokens seen so far (over the run, within the
sequence), whether the previous token chose it at the target layer, and
'ahead' when the trace has it. Works on imported traces (no 'ahead').

eval: score a saved predictor on a trace (on its held-out sequences when it is
the trace it was trained on, else on every sequence).

Use the file with --predictor P in simulate, sweep and execute. Without
--predictor, '--speculation learned' trains itself on the simulated trace's
training split and predicts only for the held-out sequences.

examples:
  pregate predictor train runs/mixtral-like -o runs/mixtral-like.predictor.npz
  pregate predictor eval runs/other-trace runs/mixtral-like.predictor.npz
  pregate simulate runs/mixtral-like --speculation learned --predictor runs/mixtral-like.predictor.npz"""


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=("train", "eval"), help="train a predictor, or score a saved one")
    parser.add_argument("trace", help="trace folder")
    parser.add_argument("predictor", nargs="?", help="eval: the predictor file to score")
    parser.add_argument("-o", "--out", help="train: where to save the predictor (.npz)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training split (default 0)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="split by groups of this many sequences, as a simulation at this batch size "
                             "forms them (default 1)")
    parser.add_argument("--no-ahead", action="store_true", help="do not use the trace's 'ahead' column as a feature")
    parser.add_argument("--steps", type=int, default=150, help="optimiser steps per model (default 150)")
    from pregate.traces.cliargs import add_json, add_quiet

    add_json(parser, "the accuracy table")
    add_quiet(parser)


def run(args) -> int:
    import json
    import os
    import time

    from pregate.simulator.errors import SimulatorError
    from pregate.simulator.predictor import Predictor, evaluate, stack_data, train
    from pregate.traces import open_trace

    trace = open_trace(args.trace)
    if args.action == "train":
        if not args.out:
            raise SimulatorError("predictor train needs -o FILE (where to save it)")
        if args.batch_size < 1 or args.steps < 1:
            raise SimulatorError("--batch-size and --steps must be at least 1")
        if os.path.isdir(args.out):  # refused before the training, not after it
            raise SimulatorError(f"-o {args.out} is a folder: give the predictor's file name (e.g. P.npz)")
        start = time.perf_counter()
        data = stack_data(trace, with_ahead=True)
        model = train(trace, seed=args.seed, batch_size=args.batch_size, use_ahead=not args.no_ahead,
                      steps=args.steps, data=data, progress=not args.quiet)
        path = model.save(args.out)
        if not args.quiet:
            print(f"trained on {len(model.train_seqs)} sequences in {time.perf_counter() - start:.1f} s "
                  f"(features: {', '.join(model.meta['features'])}); saved {path}")
    else:
        if not args.predictor:
            raise SimulatorError("predictor eval needs the predictor file: pregate predictor eval TRACE FILE")
        model = Predictor.load(args.predictor)
        data = stack_data(trace, with_ahead=True)
    rows = evaluate(trace, model, data=data)
    from pregate.traces.cliargs import emit_json, json_to_stdout

    emit_json(args, json.dumps(rows, indent=2))
    if json_to_stdout(args):
        return 0
    print(f"accuracy on {rows[0]['tokens']} held-out (token, layer) pairs at j=1 "
          "(top-1: first guess is the router's first choice; recall: share of the top-k found in the first k)")
    print(f"  {'j':>2}  {'learned':>15}  {'transition':>15}  {'eam':>15}  {'ahead':>15}")
    print(f"  {'':>2}  " + "  ".join(f"{'top-1':>7}{'recall':>8}" for _ in range(4)))

    def cell(v):
        return f"{'-':>7}" if v is None else f"{v:>7.3f}"

    for r in rows:
        line = f"  {r['distance']:>2}  "
        line += "  ".join(cell(r[f"{n}_top1"]) + " " + cell(r[f"{n}_recall"]) for n in ("learned", "transition", "eam", "ahead"))
        print(line)
    print("  transition and eam predict layer l+1 only; ahead is '-' when the trace has no 'ahead' column")
    return 0
