"""Files written whole: a reader, a crash or a full disk never leaves half of one.

A full disk (or quota) leaves the file as it was and raises :class:`NoSpaceError`.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

FULL = (errno.ENOSPC, errno.EDQUOT)


class NoSpaceError(OSError):
    """A file could not be written for want of disk space; it was left as it was."""


def temporary_name(path: Path, pid: int | str | None = None) -> Path:
    """``NAME.<pid>.tmp`` beside ``path``, where :func:`write_atomically` writes first (``pid="*"``: a glob)."""
    return path.with_name(f"{path.name}.{os.getpid() if pid is None else pid}.tmp")


def write_atomically(path: str | Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` through a flushed temporary file and a rename (then sync the folder)."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise _no_space(error, path, len(data)) from None
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def append_line(path: str | Path, line: str) -> None:
    """Append ``line`` and a newline to ``path`` in one write; if the write fails, cut the file back."""
    path, data = Path(path), (line + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, data)
        except OSError as error:
            os.ftruncate(fd, size)
            raise _no_space(error, path, len(data)) from None
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (one call may write less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _no_space(error: OSError, path: Path, needed: int) -> OSError:
    """A :class:`NoSpaceError` if ``error`` is a full disk; else ``error``."""
    if error.errno not in FULL:
        return error
    free = shutil.disk_usage(path.parent).free
    return NoSpaceError(f"no space left on the device of {path.parent} for {path.name}: it needs {needed:,} "
                        f"bytes and {free:,} are free; {path.name} was left as it was")


def cannot_write(folder: str | Path) -> str | None:
    """Why no file can be created in ``folder`` (e.g. ``Read-only file system``), or ``None`` if one can."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as error:
        return error.strerror
