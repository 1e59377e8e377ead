"""The one exception type the command line turns into a one-line message.

Every part raises a subclass of :class:`PregateError` for bad input (a corrupt
trace, an unknown model, a policy name typo). The CLI prints ``error: <message>``
and exits with status 2 instead of showing a traceback; anything else is a bug
and keeps its traceback.
"""


class PregateError(Exception):
    """Bad input or an unmet precondition, explained in one line for the user."""
