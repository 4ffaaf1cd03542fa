"""The exception types for mistakes a user can make (bad names, files, values) and for runs that fail
in a way the user must act on (a diverged training)."""


class KerasDigitsError(Exception):
    """A user-facing error: the CLI prints its message as one line and exits with `exit_code` (2)."""

    exit_code = 2


class TrainingDiverged(KerasDigitsError):
    """Training produced a non-finite loss or weights; the run is recorded as diverged (exit code 3)."""

    exit_code = 3
