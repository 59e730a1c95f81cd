"""Files that appear whole or not at all: what several runs writing into one folder at once need."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


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
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
