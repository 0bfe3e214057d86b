"""One writer per run directory: an exclusive OS advisory lock on ``RUN.lock``, beside ``RUN/``.

The lock is ``flock(2)`` on the lock file, so the kernel releases it when the holder ends in
any way, SIGKILL included: a lock is never stale and needs no cleaning up. The file sits
beside the run directory, so it can be taken before the directory exists. The holder writes
its pid and start time into it, for the message a refused writer prints, and deletes it when
done; a writer that opened the file just before it was deleted notices and opens it again.
A run takes the lock once, so it costs nothing per epoch.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from pyrovae.settings import SettingError

HOLDER_WAIT = 1.0
"""Seconds a refused writer waits for a holder that has just locked to write its pid and start time."""


class RunInUse(SettingError):
    """Another process holds the run directory's lock; nothing was written."""


def lock_path(run_dir: str | Path) -> Path:
    """``RUN.lock`` beside the run directory ``RUN`` (symbolic links resolved, so every name of a folder
    gets the same lock)."""
    run_dir = Path(run_dir).resolve()
    return run_dir.with_name(run_dir.name + ".lock")


class RunLock:
    """The exclusive lock of the run directory ``run_dir``; :meth:`acquire` never waits.

    ``setting`` names the setting that chooses another folder, for the refusal's message.
    """

    def __init__(self, run_dir: str | Path, setting: str = "run_dir"):
        self.run_dir, self.setting = Path(run_dir), setting
        self.path = lock_path(run_dir)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`RunInUse` naming the holder's pid and start time."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                error = self._in_use(fd)
                os.close(fd)
                raise error from None
            if _is_linked(fd, self.path):
                break
            os.close(fd)  # the holder deleted the file while we opened it: try the new one
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, started {started}\n".encode(), 0)
        self._fd = fd

    def check_free(self) -> None:
        """Raise :class:`RunInUse` if another process holds the lock, without taking it (for the checks made
        before any work)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:  # no lock file: nobody holds it (or the folder is missing, which other checks report)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._in_use(fd) from None
        finally:
            os.close(fd)

    def _in_use(self, fd: int) -> RunInUse:
        return RunInUse(self.setting, f"{self.run_dir} is in use by another pyrovae process ({_holder(fd)}); "
                                      f"wait for it or choose another {self.setting}")

    def release(self) -> None:
        """Delete the lock file, then let go of the lock (in that order, see :func:`_is_linked`)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()


def _is_linked(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``: a lock on a deleted lock file locks nothing."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _holder(fd: int) -> str:
    """``pid N, started T`` from the lock file, waiting briefly for a holder that has only just locked it."""
    deadline = time.monotonic() + HOLDER_WAIT
    while True:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
        if text or time.monotonic() > deadline:
            return text or "pid unknown, started just now"
        time.sleep(0.01)
