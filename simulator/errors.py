"""Errors of the simulator: one line each, naming the bad setting, key or file.

They subclass :class:`pregate.traces.errors.PregateError`, so the command line prints
the message and exits with status 2 instead of a traceback.
"""

from __future__ import annotations

import difflib

from pregate.traces.errors import PregateError


class SimulatorError(PregateError):
    """Bad simulator input: an unknown policy, a malformed profile, an impossible setting."""


class ProfileError(SimulatorError):
    """A hardware profile that does not follow the schema (see simulator/README.md)."""


def unknown_name(kind: str, name: str, valid: list[str]) -> SimulatorError:
    """The error for a misspelt name: lists the valid names and suggests the closest one."""
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return SimulatorError(f"unknown {kind} '{name}' (valid: {', '.join(valid)}){hint}")
