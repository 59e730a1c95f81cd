"""Errors a user causes and can fix: the CLI prints them as one line and exits with status 2."""


class UsageError(ValueError):
    """Bad input: a class out of range, an empty split, a missing or mismatched checkpoint, corrupt data."""


class CellsFailed(RuntimeError):
    """Some of a bench's cells failed (each already reported with its log); the others' results are kept. Exit status 1."""
