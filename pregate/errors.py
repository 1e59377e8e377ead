"""The one exception type the command line turns into a one-line message.

Every part raises a subclass of :class:`PregateError` for bad input (a corrupt
trace, an unknown model, a policy name typo). The CLI prints ``error: <message>``
and exits with status 2 instead of showing a traceback; anything else is a bug
and keeps its traceback. The class is defined in the lowest part
(``pregate.traces.errors``) so that every part can use it; it is re-exported here.
"""

from pregate.traces.errors import PregateError

__all__ = ["PregateError"]
