"""Run directories: ``config.json``, ``checkpoint.pt``, ``metrics.jsonl``, pictures and TensorBoard events.

Checkpoints hold only tensors and plain containers, are loaded with
``torch.load(weights_only=True)`` (so a crafted file cannot run code) and checked for
the entries a pyrovae checkpoint has. Every file is written whole (:mod:`pyrovae.files`):
a crash, a reader or a full disk sees the old checkpoint or the new one, never half of one.
``config.json`` is read through :func:`~pyrovae.settings.settings_from_json`: known keys
and types only. The one exception to whole files: TensorBoard's event files in
``tensorboard/``, which grow while training runs (:mod:`pyrovae.report.tensorboard`).

One process at a time writes a run: :meth:`RunDir.writing` holds the directory's lock
(:mod:`pyrovae.runs.lock`) while it does. Readers (``evaluate``, ``sample``, :func:`load_run`) take no lock.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch

from pyrovae.data.datasets import DataConfig, Dataset, load_dataset
from pyrovae.data.sources import check_unchanged
from pyrovae.files import append_line, cannot_write, temporary_name, write_atomically
from pyrovae.model.vae import VAE
from pyrovae.runs.lock import RunLock
from pyrovae.settings import SettingError, settings_from_json

Settings = TypeVar("Settings")

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
EVAL = "eval.json"
STALE_EVAL = "eval.stale.json"
"""Where resuming moves ``eval.json``: its numbers belong to the checkpoint that training replaces."""
TENSORBOARD = "tensorboard"
"""The folder of a run's TensorBoard event files (``tensorboard=True``)."""
CONFIG_SECTIONS = ("model", "data", "train", "source")
CHECKPOINT_ENTRIES = {"model": dict, "optimizer": dict, "epoch": int, "rng": dict, "kl_weight": torch.Tensor,
                      "metrics": list, "skipped": int, "partial": (dict, type(None))}
"""What :func:`~pyrovae.training.loop.fit` saves: the trained state, the metrics history up to ``epoch``,
the count of skipped non-finite batches, and ``partial``, the position in an interrupted epoch."""


class CheckpointError(ValueError):
    """A checkpoint or config file is missing, truncated or not one pyrovae wrote."""


def default_run_dir(root: str | Path = "runs") -> Path:
    """``runs/<timestamp>``, made unique if two runs start in the same second."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / stamp
    suffix = 1
    while path.exists():
        suffix += 1
        path = Path(root) / f"{stamp}-{suffix}"
    return path


_WRITING: set[Path] = set()
"""Run directories this process holds the lock of (``pyrovae train`` holds it and calls :func:`fit`, which takes
it too)."""


class RunDir:
    """One training run's folder and the files in it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def create(self) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def check(self, resume: bool = False, overwrite: bool = False) -> RunDir:
        """Check, reading only, that training may write here: before any work, and again under the lock.

        No other process may be writing the folder; it must be writable (or creatable), and
        hold no earlier run unless it is resumed (``resume``) or replaced (``overwrite``).
        Messages name the settings of :func:`~pyrovae.training.loop.fit`: ``run_dir``, ``resume``,
        ``overwrite``.
        """
        if resume and overwrite:
            raise ValueError("resume=True continues a run and overwrite=True replaces it; pass one of them")
        if self.path.exists() and not self.path.is_dir():
            raise SettingError("run_dir", f"run_dir {self.path} is a file, not a folder; choose a folder for the "
                                          f"run directory")
        if self.path.resolve() not in _WRITING:
            RunLock(self.path).check_free()  # a run another process writes is refused as such, whatever its state
        holds_run = self.file(CHECKPOINT).exists() or self.file(CONFIG).exists()
        if resume and not self.file(CHECKPOINT).exists():
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
        return self

    @contextlib.contextmanager
    def writing(self, setting: str = "run_dir") -> Iterator[RunDir]:
        """Be the one process writing this run while inside; a second one gets :class:`~pyrovae.runs.lock.RunInUse`.

        The lock file goes beside the folder (its parent folders are created for it). If
        the folder did not exist when the lock was taken and no checkpoint is in it when an
        error ends the block, the folder is removed: a run that fails before its first
        checkpoint leaves nothing behind. Re-entering in the process that holds the lock
        does nothing. ``setting`` names the setting that chooses another folder.
        """
        key = self.path.resolve()
        if key in _WRITING:
            yield self
            return
        self.path.absolute().parent.mkdir(parents=True, exist_ok=True)
        with RunLock(self.path, setting):
            _WRITING.add(key)
            existed = self.path.exists()
            try:
                yield self
            except BaseException:
                if not existed and not self.file(CHECKPOINT).exists():
                    shutil.rmtree(self.path, ignore_errors=True)
                raise
            finally:
                _WRITING.discard(key)

    def prepare(self, resume: bool = False, overwrite: bool = False, extra: Iterable[str] = ()) -> RunDir:
        """Inside :meth:`writing`: :meth:`check` again, then ready the folder for training.

        ``overwrite`` deletes the previous run's files and the ``extra`` names, nothing else.
        Resuming moves ``eval.json`` aside to ``eval.stale.json`` and says so, since training
        replaces the checkpoint it evaluated. Temporary files a killed writer left are deleted.
        """
        self.check(resume, overwrite)
        if overwrite:
            self.clear(extra)
        if resume and self.file(EVAL).exists():
            os.replace(self.file(EVAL), self.file(STALE_EVAL))
            print(f"moved {self.file(EVAL)} to {STALE_EVAL}: it evaluated the checkpoint that training now "
                  f"replaces; evaluate again when it is done", file=sys.stderr)
        for name in (CONFIG, CHECKPOINT, METRICS):
            for stale in self.path.glob(temporary_name(Path(name), pid="*").name):
                stale.unlink()
        return self

    def write_config(self, config: dict[str, Any]) -> None:
        write_atomically(self.file(CONFIG), json.dumps(config, indent=2, sort_keys=True).encode())

    def read_config(self) -> dict[str, Any]:
        path = self.file(CONFIG)
        if not path.is_file():
            raise CheckpointError(f"{path} does not exist; is {self.path} a pyrovae run directory "
                                  f"(written by training with run_dir='{self.path}')?")
        try:
            config = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{path} is not valid JSON ({error}); restore it or train again") from None
        if not isinstance(config, dict) or not set(config) <= set(CONFIG_SECTIONS):
            found = sorted(config) if isinstance(config, dict) else type(config).__name__
            raise CheckpointError(f"{path} is not a pyrovae run config: expected the sections "
                                  f"{', '.join(CONFIG_SECTIONS)}, found {found}; restore it or train again")
        return config

    def settings(self, cls: type[Settings], section: str) -> Settings:
        """Section ``section`` of ``config.json`` as the settings class ``cls``, keys and types checked."""
        config = self.read_config().get(section)
        if config is None:
            raise CheckpointError(f"{self.file(CONFIG)} has no {section} settings (the run was made in Python "
                                  f"with custom parts); rebuild it in Python and load {CHECKPOINT} yourself")
        try:
            return settings_from_json(cls, config, f"{self.file(CONFIG)}, section {section!r}")
        except ValueError as error:
            raise CheckpointError(f"{error}; fix the file or train again") from None

    def load_data(self) -> Dataset:
        """The dataset the run was trained on, as ``config.json`` describes it, on the CPU.

        Refused with :class:`~pyrovae.data.sources.SourceChanged` when the data read now differ from
        what the run recorded (shape, dtype or content hash; see :mod:`pyrovae.data.sources`).
        """
        data = load_dataset(self.settings(DataConfig, "data"))
        recorded = self.read_config().get("source")
        if recorded is not None and data.provenance is not None:
            check_unchanged(recorded, data.provenance)
        return data

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Add one epoch's row to ``metrics.jsonl``: a whole line or, on a full disk, nothing."""
        append_line(self.file(METRICS), json.dumps(row))

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.file(METRICS)
        if not path.is_file():
            return []
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise CheckpointError(f"{path} line {number} is not JSON (was the run killed while writing it?); "
                                      f"training with run_dir='{self.path}' and resume=True rewrites the file "
                                      f"from the checkpoint") from None
        return rows

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Replace ``metrics.jsonl`` by ``rows`` (on resume: the history saved in the checkpoint)."""
        write_atomically(self.file(METRICS), "".join(json.dumps(row) + "\n" for row in rows).encode())

    def clear(self, extra: Iterable[str] = ()) -> None:
        """Delete the files of a previous run here (and the ``extra`` names), keeping anything else."""
        for name in (CONFIG, CHECKPOINT, METRICS, EVAL, STALE_EVAL, *extra):
            self.file(name).unlink(missing_ok=True)
        shutil.rmtree(self.file(TENSORBOARD), ignore_errors=True)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()  # whole before the disk sees it: a full disk is told the bytes it needed
        torch.save(state, buffer)
        write_atomically(self.file(CHECKPOINT), buffer.getvalue())

    def load_checkpoint(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        path = self.file(CHECKPOINT)
        if not path.is_file():
            raise CheckpointError(f"{path} does not exist; train first, with run_dir='{self.path}'")
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as error:  # truncated zip, random bytes, or a pickle asking for code
            raise CheckpointError(
                f"{path} is not a readable pyrovae checkpoint ({type(error).__name__}); it may be "
                f"truncated, corrupt or from an untrusted source. Train again or restore a copy."
            ) from None
        _check_checkpoint(state, path)
        return state

    def restore(self, state: dict[str, Any], vae: VAE, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Load a checkpoint's weights (and optimizer state) into ``vae``, refusing ones of another model."""
        try:
            vae.load_state_dict(state["model"])
            if optimizer is not None:
                optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, TypeError, ValueError) as error:
            raise CheckpointError(f"{self.file(CHECKPOINT)} does not match the model of {self.file(CONFIG)} "
                                  f"({type(error).__name__}); train again or restore a copy") from None


def _check_checkpoint(state: Any, path: Path) -> None:
    """Raise :class:`CheckpointError` unless ``state`` has the entries and types of :data:`CHECKPOINT_ENTRIES`."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a pyrovae checkpoint; "
                              f"point to a run directory that `pyrovae train` wrote")
    for key, kind in CHECKPOINT_ENTRIES.items():
        if not isinstance(state.get(key), kind):
            problem = "lacks" if key not in state else "has a malformed"
            raise CheckpointError(f"{path} {problem} entry {key!r}, so it is not a checkpoint of this pyrovae "
                                  f"version; train again or restore a copy")
    if not all(torch.is_tensor(value) for value in state["model"].values()):
        raise CheckpointError(f"{path} has model weights that are not tensors; train again or restore a copy")


