"""The one exception type for mistakes a user can make (bad names, files, values)."""


class KerasDigitsError(Exception):
    """A user-facing error: the CLI prints its message as one line and exits with code 2."""
