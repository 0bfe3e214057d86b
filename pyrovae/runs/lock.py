"""One writer per run directory: ``filelock``'s lock on ``RUN.lock``, beside ``RUN/``.

The operating system releases the lock when its holder ends in any way (SIGKILL included),
so a lock is never stale. The file sits beside the run directory, so it can be taken before
the directory exists. The holder writes its pid and start time into it, for the message a
refused writer prints, and deletes it when done.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import time
from pathlib import Path
from types import TracebackType

from filelock import FileLock, Timeout

from pyrovae.files import FULL, NoSpaceError
from pyrovae.settings import SettingError

HOLDER_WAIT = 1.0
"""Seconds a refused writer waits for a holder that has just locked to write its pid and start time."""


class RunInUse(SettingError):
    """Another process holds the run directory's lock; nothing was written."""


class CannotLock(SettingError):
    """The run directory's lock file cannot be created (a read-only folder, a folder in its place); nothing was
    written."""


def lock_path(run_dir: str | Path) -> Path:
    """``RUN.lock`` beside the run directory ``RUN`` (symbolic links resolved, so every name of a folder
    gets the same lock)."""
    run_dir = Path(run_dir).resolve()
    return run_dir.with_name(run_dir.name + ".lock")


class RunLock:
    """The exclusive lock of the run directory ``run_dir``; taking it never waits.

    ``setting`` names the setting that chooses another folder, for the refusal's message.
    """

    def __init__(self, run_dir: str | Path, setting: str = "run_dir"):
        self.run_dir, self.setting = Path(run_dir), setting
        self.path = lock_path(run_dir)
        try:
            self._lock = FileLock(self.path, timeout=0, on_acquired=self._write_holder)
        except ValueError:  # a soft lock (no native one here): filelock's own record names the holder's pid
            self._lock = FileLock(self.path, timeout=0)

    def acquire(self) -> None:
        """Take the lock (creating the folders it goes in), or raise :class:`RunInUse` naming the holder's pid and
        start time; a lock file that cannot be written raises :class:`CannotLock` (:class:`~pyrovae.files.NoSpaceError`
        on a full disk) naming it, and leaves neither it nor the folders made for it behind."""
        made = list(itertools.takewhile(lambda folder: not folder.exists(), self.path.parents))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except Timeout:
            raise RunInUse(self.setting, f"{self.run_dir} is in use by another pyrovae process ({self._holder()}); "
                                         f"wait for it or choose another {self.setting}") from None
        except OSError as error:
            for folder in made:  # the innermost first
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise self._cannot_lock(error) from None

    def _write_holder(self, fd: int) -> None:
        """Write ``pid N, started T`` into the lock file just locked, for a refused writer's message; if that fails,
        delete the file while still holding it (filelock then lets go)."""
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        except OSError:
            self.path.unlink(missing_ok=True)
            raise

    def _cannot_lock(self, error: OSError) -> OSError | SettingError:
        """The one-line error for a lock file that could not be created or written."""
        if error.errno in FULL:
            return NoSpaceError(f"no space left on the device of {self.path.parent} for the lock file "
                                f"{self.path.name}; free some space")
        if error.errno == errno.EISDIR:
            return CannotLock(self.setting, f"{self.path}, where the lock of {self.run_dir} goes, is a folder; "
                                            f"remove it or choose another {self.setting}")
        return CannotLock(self.setting, f"cannot create the lock file {self.path} ({error.strerror}); make "
                                        f"{self.path.parent} writable or choose another {self.setting}")

    def release(self) -> None:
        """Delete the lock file, then let go of the lock (filelock copes with a file deleted under it)."""
        if self._lock.is_locked:
            with contextlib.suppress(OSError):  # Windows keeps an open file; the next holder rewrites it
                self.path.unlink(missing_ok=True)
            self._lock.release()

    def _holder(self) -> str:
        """``pid N, started T`` from the lock file, waiting briefly for a holder that has only just locked it."""
        deadline = time.monotonic() + HOLDER_WAIT
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, UnicodeDecodeError):  # Windows may refuse to read a locked file
                text = self.path.read_text().strip()
                if text:
                    first = text.splitlines()[0]
                    return f"pid {first}" if first.isdigit() else first
            time.sleep(0.01)
        return "pid unknown, started just now"

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()
