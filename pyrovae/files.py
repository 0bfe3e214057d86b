"""Files written whole: a reader, a crash or a full disk never leaves half of one.

A write that fails leaves the file as it was and raises :class:`CannotWrite`, naming the file and the fix
(:class:`NoSpaceError` on a full disk).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

FULL = (errno.ENOSPC, errno.EDQUOT)


class CannotWrite(OSError):
    """A file could not be written (a read-only folder, a folder in its place); it was left as it was."""


class NoSpaceError(CannotWrite):
    """A file could not be written for want of disk space; it was left as it was."""


def temporary_name(path: Path, pid: int | str | None = None) -> Path:
    """``NAME.<pid>.tmp`` beside ``path``, where :func:`atomic_file` writes first (``pid="*"``: a glob)."""
    return path.with_name(f"{path.name}.{os.getpid() if pid is None else pid}.tmp")


@contextlib.contextmanager
def atomic_file(path: str | Path, size: int | None = None) -> Iterator[io.RawIOBase]:
    """A binary file that replaces ``path`` when the block ends without error (flushed, renamed, the folder
    synced) and is deleted otherwise, so that ``path`` is whole or as it was, whatever its size.

    An ``OSError`` in the block is taken as the write's and raised as :class:`CannotWrite`; ``size``, the
    bytes the file will take if known, goes into the message of a full disk.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            yield _Descriptor(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _cannot_write(error, path, size) from None
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_atomically(path: str | Path, data: bytes) -> None:
    """Replace ``path`` by ``data``, whole or not at all (:func:`atomic_file`)."""
    with atomic_file(path, len(data)) as file:
        file.write(data)


def append_line(path: str | Path, line: str) -> None:
    """Append ``line`` and a newline to ``path`` in one write; if the write fails, cut the file back."""
    path, data = Path(path), (line + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as error:
        raise _cannot_write(error, path, len(data)) from None
    try:
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, data)
        except OSError as error:
            os.ftruncate(fd, size)
            raise _cannot_write(error, path, len(data)) from None
    finally:
        os.close(fd)


class _Descriptor(io.RawIOBase):
    """The file open as ``fd``, for writing: each write is written whole (:func:`_write_all`)."""

    def __init__(self, fd: int):
        super().__init__()
        self.fd = fd

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        return _write_all(self.fd, data)


def _write_all(fd: int, data: bytes) -> int:
    """``os.write`` until all of ``data`` is written (one call may write less); the number of bytes."""
    view = memoryview(data).cast("B")
    size = len(view)
    while view:
        view = view[os.write(fd, view):]
    return size


def _cannot_write(error: OSError, path: Path, needed: int | None) -> CannotWrite:
    """The one-line :class:`CannotWrite` (:class:`NoSpaceError` for a full disk) of ``error`` writing ``path``."""
    if isinstance(error, CannotWrite):
        return error
    if error.errno in FULL:
        free = shutil.disk_usage(path.parent).free
        needs = f"it needs {needed:,} bytes and " if needed is not None else ""
        return NoSpaceError(f"no space left on the device of {path.parent} for {path.name}: {needs}{free:,} bytes "
                            f"are free; {path.name} was left as it was; free some space")
    if path.is_dir():
        return CannotWrite(f"cannot write {path}: it is a folder; remove it or write the file elsewhere")
    return CannotWrite(f"cannot write {path} ({error.strerror or error}); make sure {path.parent} exists and is "
                       f"writable, or write the file elsewhere")


def cannot_write(folder: str | Path) -> str | None:
    """Why no file can be created in ``folder`` (e.g. ``Read-only file system``), or ``None`` if one can."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as error:
        return error.strerror
