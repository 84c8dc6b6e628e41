"""Atomic output: write into a temporary sibling, rename into place only when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator


MARKER = ".hfscan-output"  # written into every folder hfscan builds: only such a folder is ever replaced


_UMASK = os.umask(0)  # the process's umask, read once (setting it back at once; not per call: threads)
os.umask(_UMASK)

def replaceable(dest: Path, also: Callable[[Path], bool] | None = None) -> bool:
    """Whether hfscan may replace ``dest``: absent, an empty folder, or a folder hfscan wrote."""
    if not dest.exists() and not dest.is_symlink():
        return True
    if dest.is_symlink() or not dest.is_dir():
        return False
    return (dest / MARKER).is_file() or not any(dest.iterdir()) or bool(also and also(dest))


def check_replaceable(dest: Path, also: Callable[[Path], bool] | None = None) -> None:
    """Refuse, with one line, to replace what hfscan did not write (checked before any work starts)."""
    from .errors import OutputExistsError

    if replaceable(dest, also):
        return
    what = "a file" if dest.is_file() or dest.is_symlink() else "a folder hfscan did not write"
    raise OutputExistsError(f"{dest} exists and is {what}; hfscan never replaces it: choose another output "
                            "folder or remove it")


def check_output_dir(folder: Path) -> None:
    """An output folder must be a folder (or creatable) and writable; checked before a scan starts."""
    from .errors import OutputExistsError

    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputExistsError(f"output {folder}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputExistsError(f"output {folder}: {probe} is not writable")


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike, overwrite: bool = True,
               also: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary folder next to ``dest``; on success it replaces ``dest``.

    On any exception (a signal turned into one by the CLI included) the temporary folder is removed
    and ``dest`` is left as it was, so a failed or interrupted run never leaves a half-written model
    behind. Only a folder that hfscan wrote (it carries `MARKER`), an empty one, or one ``also``
    accepts is ever replaced; anything else raises `OutputExistsError` before anything is written.

    Example:
        >>> with atomic_dir("out/defended") as tmp:
        ...     (tmp / "config.json").write_text("{}")
    """
    from .errors import OutputExistsError

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and not overwrite:
        raise OutputExistsError(f"{dest} exists (use --force to replace it)")
    check_replaceable(dest, also)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    tmp.chmod(0o777 & ~_UMASK)  # mkdtemp makes 0700
    try:
        yield tmp
        (tmp / MARKER).write_text("written by hfscan; hfscan may replace this folder\n")
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(dest: str | os.PathLike, text: str) -> None:
    """Write a text file through a temporary file and a rename."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; a report is as readable as any file the user writes
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
