"""The one process that writes a run directory: its lock, the checks before writing, and the folder made ready.

:meth:`RunWriter.writing` holds the directory's lock (:mod:`pyrovae.runs.lock`) while the
process writes, and removes a folder it created if it fails before a first checkpoint. Inside,
:meth:`RunWriter.check` says whether training may write here, and :meth:`RunWriter.prepare`
readies the folder; :func:`~pyrovae.training.loop.fit` calls each once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from pyrovae.files import cannot_write, temporary_name
from pyrovae.runs.checkpoint import CheckpointError
from pyrovae.runs.lock import RunLock
from pyrovae.runs.rundir import BEST, CHECKPOINT, CONFIG, EVAL, METRICS, STALE_EVAL, RunDir
from pyrovae.settings import SettingError

log = logging.getLogger(__name__)


class RunWriter:
    """The writer of the run directory ``run``; ``setting`` names the setting that chooses another folder."""

    def __init__(self, run: RunDir, setting: str = "run_dir"):
        self.run, self.setting = run, setting
        self.path = run.path

    def check(self, resume: bool = False, overwrite: bool = False, extra: Iterable[str] = ()) -> None:
        """Refuse, reading only, a folder that training may not write: under the lock, before any work (and, in
        the CLI, once more before any data are read).

        The folder must be writable (or creatable) and hold no earlier run unless it is
        resumed (``resume``) or replaced (``overwrite``); none of the run's files, nor the ``extra``
        names written there too, may be a folder. Messages name the settings of
        :func:`~pyrovae.training.loop.fit`: ``run_dir``, ``resume``, ``overwrite``.
        """
        if resume and overwrite:
            raise ValueError("resume=True continues a run and overwrite=True replaces it; pass one of them")
        if self.path.exists() and not self.path.is_dir():
            raise SettingError("run_dir", f"run_dir {self.path} is a file, not a folder; choose a folder for the "
                                          f"run directory")
        folder = next((name for name in (CONFIG, CHECKPOINT, BEST, METRICS, EVAL, STALE_EVAL, *extra)
                       if self.run.file(name).is_dir()), None)
        if folder:
            raise SettingError("run_dir", f"{self.run.file(folder)} is a folder where the run writes a file; remove "
                                          f"it or choose another run_dir folder")
        holds_run = self.run.file(CHECKPOINT).exists() or self.run.file(CONFIG).exists()
        if resume and not self.run.file(CHECKPOINT).exists():
            raise CheckpointError(f"resume=True found no {CHECKPOINT} in {self.path}; train there without "
                                  f"resume=True (add overwrite=True if it holds an unfinished first epoch)")
        if holds_run and not resume and not overwrite:
            raise SettingError("run_dir", f"{self.path} already holds a run; add resume=True to continue it, "
                                          f"overwrite=True to start it again, or choose another run_dir folder")
        existing = next(folder for folder in (self.path, *self.path.absolute().parents) if folder.exists())
        if not existing.is_dir():
            raise SettingError("run_dir", f"run_dir {self.path} lies under {existing}, which is a file; choose a "
                                          f"folder path")
        why = cannot_write(existing)  # the folder, or where it will be created
        if why:
            raise SettingError("run_dir", f"cannot write to the run directory {self.path} ({why}); "
                                          f"choose a writable run_dir folder")

    @contextlib.contextmanager
    def writing(self) -> Iterator[RunDir]:
        """Be the one process writing this run while inside; a second one gets :class:`~pyrovae.runs.lock.RunInUse`.

        The lock file goes beside the folder (its parent folders are created for it). If
        the folder did not exist when the lock was taken and no checkpoint is in it when an
        error ends the block, the folder is removed: a run that fails before its first
        checkpoint leaves nothing behind.
        """
        with RunLock(self.path, self.setting):
            existed = self.path.exists()
            try:
                yield self.run
            except BaseException:
                if not existed and not self.run.file(CHECKPOINT).exists():
                    shutil.rmtree(self.path, ignore_errors=True)
                raise

    def prepare(self, resume: bool = False, overwrite: bool = False, extra: Iterable[str] = ()) -> None:
        """Inside :meth:`writing`, once every input is checked: ready the folder for training.

        ``overwrite`` deletes the previous run's files and the ``extra`` names, nothing else.
        Resuming moves ``eval.json`` aside to ``eval.stale.json`` and says so, since training
        replaces the checkpoint it evaluated. Temporary files a killed writer left are deleted.
        """
        self.run.create()
        if overwrite:
            self.run.clear(extra)
        if resume and self.run.file(EVAL).exists():
            os.replace(self.run.file(EVAL), self.run.file(STALE_EVAL))
            log.warning(f"moved {self.run.file(EVAL)} to {STALE_EVAL}: it evaluated the checkpoint that training "
                        f"now replaces; evaluate again when it is done")
        for name in (CONFIG, CHECKPOINT, METRICS):
            for stale in self.path.glob(temporary_name(Path(name), pid="*").name):
                stale.unlink()
