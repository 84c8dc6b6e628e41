"""Atomic output: write into a temporary sibling, rename into place only when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder next to ``dest``; on success it replaces ``dest``.

    On any exception the temporary folder is removed and ``dest`` is left as it was, so a
    failed or interrupted run never leaves a half-written model behind.

    Example:
        >>> with atomic_dir("out/defended") as tmp:
        ...     (tmp / "config.json").write_text("{}")
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and not overwrite:
        from .errors import OutputExistsError

        raise OutputExistsError(f"{dest} exists (use --force to replace it)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(dest: str | os.PathLike, text: str) -> None:
    """Write a text file through a temporary file and a rename."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
