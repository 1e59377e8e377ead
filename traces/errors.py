"""Errors about traces: each message is one line that names what is wrong and where."""

from pregate.errors import PregateError


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
