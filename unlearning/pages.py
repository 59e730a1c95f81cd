"""Pages whose numbers are written by the code that measures them (the bench, the calibration), never copied by hand."""

from __future__ import annotations

import re
from pathlib import Path

from unlearning.files import atomic_file


def _markers(key: str) -> tuple[str, str]:
    """The comments that open and close a section: ``<!-- bench:key -->`` and ``<!-- /bench:key -->``."""
    return f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"


def replace_section(page: Path, key: str, text: str) -> None:
    """Put ``text`` between ``<!-- bench:key -->`` and ``<!-- /bench:key -->`` in ``page`` (appended the first time), so the
    numbers a page shows are always the last bench's; the page is replaced whole (:func:`~unlearning.files.atomic_file`)."""
    start, end = _markers(key)
    old = page.read_text() if page.exists() else ""
    block = f"{start}\n{text.strip()}\n{end}"
    new = (
        re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, old, flags=re.DOTALL)
        if start in old
        else f"{old.rstrip()}\n\n{block}\n"
    )
    page.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(page) as f:
        f.write(new.encode())


def read_section(page: Path, key: str) -> str | None:
    """What :func:`replace_section` last put under ``key`` in ``page``; ``None`` where there is no such section (or page)."""
    start, end = _markers(key)
    text = page.read_text() if page.exists() else ""
    found = re.search(re.escape(start) + r"\n?(.*?)\n?" + re.escape(end), text, flags=re.DOTALL)
    return found.group(1) if found else None
