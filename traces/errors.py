"""Errors about traces, and the one base error type every part raises for bad input.

``PregateError`` lives here, in the lowest part, so that every part can
subclass it without importing anything above itself; the command line
(``pregate/cli.py``) turns it into one line and exit status 2.
"""


class PregateError(Exception):
    """Bad input or an unmet precondition, explained in one line for the user."""


class TraceError(PregateError):
    """A trace cannot be read or written (missing folder, corrupt file, bad metadata)."""


class TraceValidationError(TraceError):
    """A trace is readable but breaks the format's rules.

    The message names the file, the column and the first offending row.
    """

    def __init__(self, file: str, column: str, row: int | None, problem: str):
        self.file, self.column, self.row, self.problem = file, column, row, problem
        where = f"{file}: column '{column}'"
        if row is not None:
            where += f", row {row}"
        super().__init__(f"{where}: {problem}")
