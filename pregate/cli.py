"""The ``pregate`` command: one subcommand per job, each defined next to its part.

A subcommand is a module with ``HELP`` (one line), ``DESCRIPTION`` (shown by its
``--help``), ``add_arguments(parser)`` and ``run(args) -> int``. Those modules keep
heavy imports (torch, transformers) inside ``run`` so that ``--help`` stays fast.
Adding a subcommand is one line in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from pregate import __version__
from pregate.errors import PregateError

# name -> module that implements it, in the order `pregate --help` lists them.
COMMANDS: dict[str, str] = {
    "demo": "pregate.demo",
    "trace": "pregate.tracer.cli",
    "trace-info": "pregate.traces.cli_info",
    "validate-trace": "pregate.traces.cli_validate",
    "trace-stats": "pregate.analysis.cli_stats",
    "import": "pregate.traces.cli_import",
    "models": "pregate.tracer.cli_models",
    "simulate": "pregate.simulator.cli",
    "sweep": "pregate.simulator.cli_sweep",
    "recommend": "pregate.simulator.cli_recommend",
    "synth": "pregate.simulator.cli_synth",
    "predictor": "pregate.simulator.cli_predictor",
    "report": "pregate.analysis.cli_report",
    "train": "pregate.tracer.cli_train",
    "execute": "pregate.executor.cli_execute",
    "calibrate": "pregate.executor.cli_calibrate",
    "validate": "pregate.executor.cli_validate",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pregate",
        description=(
            "Find the best way to run a Mixture-of-Experts model whose experts do not fit "
            "in GPU memory: record routing traces from real models, replay them against "
            "hardware profiles, and validate on a GPU."
        ),
        epilog="Run 'pregate COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"pregate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser._pregate_commands = {}  # name -> its parser, so an unknown flag is reported with that command's usage
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
        parser._pregate_commands[name] = cmd
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse would blame 'pregate' and show the top-level usage; the user typed a subcommand's flag
        where = parser._pregate_commands.get(args.command, parser)
        where.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except PregateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # a path the user gave that cannot be used (a file where a folder is wanted, no permission, full
        # disk): one line naming it; PREGATE_TRACEBACK=1 shows where it happened
        if os.environ.get("PREGATE_TRACEBACK"):
            raise
        print(f"error: {_os_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: what was already written is kept; the command's --help says how it resumes",
              file=sys.stderr)
        return 130


def _os_message(exc: OSError) -> str:
    what = exc.strerror or type(exc).__name__
    names = " -> ".join(str(n) for n in (exc.filename, exc.filename2) if n is not None)
    hint = {
        "FileExistsError": "give a folder name that is free or an existing folder",
        "NotADirectoryError": "a file stands where a folder is needed; give a folder",
        "IsADirectoryError": "give a file name, not a folder",
        "PermissionError": "choose a place you can write to",
    }.get(type(exc).__name__, "check the path")
    return f"{names}: {what} ({hint})" if names else f"{what} ({hint})"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
