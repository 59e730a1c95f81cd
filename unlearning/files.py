"""Files that appear whole or not at all: what several runs writing into one folder at once need."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from unlearning.errors import UsageError


def _umask() -> int:
    """The process's umask (read by setting it, so once, at import: it is process-wide state)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file that becomes ``path`` only when the ``with`` block ends without an error.

    It is written beside ``path`` under a temporary name of this process's own and renamed over
    ``path`` once flushed to disk; an error (or a kill) leaves ``path`` as it was and the temporary
    file removed, so a reader never sees half a file and two writers never share one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        os.chmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide a checkpoint or result from the user's group
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def unwritable_as_usage_error(path: str | Path, advice: str) -> Iterator[None]:
    """A folder this user cannot write (or a read-only file system) as one :class:`UsageError` line: which path, and ``advice``."""
    try:
        yield
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise UsageError(f"cannot write {err.filename or path}: {os.strerror(err.errno).lower()}; {advice}") from None
