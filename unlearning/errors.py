"""Errors a user causes and can fix: the CLI prints them as one line and exits with status 2."""


class UsageError(ValueError):
    """Bad input: a class out of range, an empty split, a missing or mismatched checkpoint, corrupt data."""


class BenchFailed(RuntimeError):
    """A bench ran to its end, but its outcome is a failure; what it wrote is kept. Exit status 1."""


class CellsFailed(BenchFailed):
    """Some of a bench's cells failed (each already reported with its log); the others' results are kept."""


class HeadlineChanged(BenchFailed):
    """A verdict the headline page documented came out otherwise; the page now shows the new one."""
