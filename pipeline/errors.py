"""The one exception type the CLI turns into a one-line message."""


class ActrecError(Exception):
    """Bad input or a refused operation: the message says what and what to do.

    Library code raises this for anything a user can fix (a missing file, a bad
    config value, a cache made with other settings). Anything else is a bug and
    keeps its traceback.
    """
