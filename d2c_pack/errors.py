"""Errors a user can cause and fix; the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A problem with the user's input (paths, flags, recipes, data), not a bug.

    The CLI shows ``error: <message>`` and exits with status 2; ``--debug`` shows the traceback.
    """


class SourceError(UserError):
    """A source that is missing, empty or cannot be read as a labelled image dataset."""


def first_line(error: BaseException) -> str:
    """An exception's message as one line (its first), for a ``UserError`` that wraps it."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
