"""The flags every subcommand spells the same way: ``--json [FILE]``, ``-o/--out``, ``--quiet``.

Why one module: a user who learnt one command should be able to guess the
next; ``tests/test_cli_grammar.py`` walks every subcommand's parser and checks
these conventions, so defining them here keeps each command in line. It
lives in the lowest part and imports nothing of the project, like the base
error type, so every part's command modules may use it (ARCHITECTURE.md).

* ``--json`` alone prints the JSON to stdout instead of the text; ``--json
  FILE`` writes it to FILE and prints the text as usual;
* ``-o/--out`` names the folder (or file) a command writes;
* ``--policy-arg NAME=VALUE`` (repeatable) sets one policy parameter;
* ``--quiet`` drops progress bars and notes on stderr, never the result, an
  error or the exit status.
"""

from __future__ import annotations

import sys
from pathlib import Path

STDOUT = "-"


def add_json(parser, what: str = "the result") -> None:
    parser.add_argument("--json", nargs="?", const=STDOUT, default=None, metavar="FILE",
                        help=f"{what} as JSON: alone, printed to stdout instead of the text; with FILE, "
                             "written there (the text still prints)")


def add_quiet(parser) -> None:
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars or notes on stderr (the result, errors and exit status are unchanged)")


def add_policy_args(parser, help: str, dest: str = "policy_args") -> None:
    """``--policy-arg NAME=VALUE``, repeatable; the values are checked where the policies are known."""
    parser.add_argument("--policy-arg", dest=dest, action="append", default=None, metavar="NAME=VALUE", help=help)


def json_to_stdout(args) -> bool:
    """Whether ``--json`` was given alone: the JSON replaces the text on stdout."""
    return getattr(args, "json", None) == STDOUT


def emit_json(args, text: str) -> None:
    """Print or write the JSON ``text`` as ``--json`` asks; nothing when it was not given."""
    target = getattr(args, "json", None)
    if target is None:
        return
    if target == STDOUT:
        print(text)
        return
    Path(target).write_text(text.rstrip("\n") + "\n")
    if not getattr(args, "quiet", False):
        print(f"wrote {target}", file=sys.stderr)
