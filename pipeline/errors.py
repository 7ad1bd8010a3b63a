"""The one exception type the CLI turns into a one-line message."""


class ActrecError(Exception):
    """Bad input or a refused operation: the message says what and what to do.

    Library code raises this for anything a user can fix (a missing file, a bad
    config value, a cache made with other settings). Anything else is a bug and
    keeps its traceback.
    """


def error_line(exc: BaseException, limit: int = 300) -> str:
    """``exc`` as the one line a run's or trial's record keeps and the terminal shows: an ActrecError's own
    message (it is written for the user), anything else with its type; whitespace folded, at most ``limit``
    characters, never a traceback."""
    text = str(exc) if isinstance(exc, ActrecError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:limit] or type(exc).__name__
