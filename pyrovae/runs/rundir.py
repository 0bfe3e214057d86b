"""Run directories: ``config.json``, ``checkpoint.pt`` (and ``best.pt``), ``metrics.jsonl``, pictures, TensorBoard.

Checkpoints load with ``torch.load(weights_only=True)`` as a :class:`~pyrovae.runs.checkpoint.Checkpoint`,
``config.json`` through :func:`~pyrovae.settings.settings_from_json`. Every file but TensorBoard's events is written
whole (:mod:`pyrovae.files`). One process at a time writes a run (:mod:`pyrovae.runs.writer`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch

from pyrovae.files import append_line, write_atomically
from pyrovae.runs.checkpoint import Checkpoint, CheckpointError, metrics_row_problem
from pyrovae.settings import settings_from_json

Settings = TypeVar("Settings")

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
METRICS = "metrics.jsonl"
EVAL = "eval.json"
STALE_EVAL = "eval.stale.json"  # where resuming moves eval.json: it scored the checkpoint that training replaces
TENSORBOARD = "tensorboard"  # the folder of TensorBoard's event files (tensorboard=True)
CONFIG_SECTIONS = ("model", "data", "train", "source", "table")


def default_run_dir(root: str | Path = "runs") -> Path:
    """``runs/<timestamp>-<pid>``: processes started at once each get their own, without creating it (a refused
    run leaves nothing); one process's runs in the same second are told apart by a suffix."""
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    path = Path(root) / stamp
    suffix = 1
    while path.exists():
        suffix += 1
        path = Path(root) / f"{stamp}-{suffix}"
    return path


class RunDir:
    """One training run's folder and the files in it."""

    def __init__(self, path: str | Path):
        if not str(path):
            raise ValueError("the path of the run directory is empty; name its folder")
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def create(self) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def write_config(self, config: dict[str, Any]) -> None:
        write_atomically(self.file(CONFIG), json.dumps(config, indent=2, sort_keys=True).encode())

    def read_config(self) -> dict[str, Any]:
        path = self.file(CONFIG)
        if not path.is_file():
            raise CheckpointError(f"{path} does not exist; is {self.path} a pyrovae run directory "
                                  f"(written by training with run_dir='{self.path}')?")
        try:
            config = json.loads(path.read_bytes())
        except (ValueError, RecursionError) as error:  # not JSON, not UTF-8, or nested too deep
            raise CheckpointError(f"{path} is not valid JSON ({error}); restore it or train again") from None
        if not isinstance(config, dict) or not set(config) <= set(CONFIG_SECTIONS):
            found = sorted(config) if isinstance(config, dict) else type(config).__name__
            raise CheckpointError(f"{path} is not a pyrovae run config: expected the sections "
                                  f"{', '.join(CONFIG_SECTIONS)}, found {found}; restore it or train again")
        for name, section in config.items():
            if not isinstance(section, dict | None):
                raise CheckpointError(f"{path} has a {name} section that is a {type(section).__name__}, not an "
                                      f"object; restore the file or train again")
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

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Add one epoch's row to ``metrics.jsonl``: a whole line or, on a full disk, nothing."""
        append_line(self.file(METRICS), json.dumps(row))

    def read_metrics(self) -> list[dict[str, Any]]:
        """The rows of ``metrics.jsonl``; a line that is no metrics row is refused, naming the file and the line."""
        path = self.file(METRICS)
        if not path.is_file():
            return []
        rows = []
        for number, line in enumerate(path.read_bytes().splitlines(), start=1):
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):  # not JSON, or not UTF-8
                problem = "is not JSON (was the run killed while writing it?)"
            else:
                problem = metrics_row_problem(row)
                problem = problem and f"is not a metrics row ({problem})"
            if problem:
                raise CheckpointError(f"{path} line {number} {problem}; training with run_dir='{self.path}' and "
                                      f"resume=True rewrites the file from the checkpoint")
            rows.append(row)
        return rows

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Replace ``metrics.jsonl`` by ``rows`` (on resume: the history saved in the checkpoint)."""
        write_atomically(self.file(METRICS), "".join(json.dumps(row) + "\n" for row in rows).encode())

    def clear(self, extra: Iterable[str] = ()) -> None:
        """Delete the files of a previous run here (and the ``extra`` names), keeping anything else."""
        for name in (CONFIG, CHECKPOINT, BEST, METRICS, EVAL, STALE_EVAL, *extra):
            self.file(name).unlink(missing_ok=True)
        shutil.rmtree(self.file(TENSORBOARD), ignore_errors=True)

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Replace ``checkpoint.pt``, its bytes made whole first (a full disk is told how many it needed)."""
        write_atomically(self.file(CHECKPOINT), checkpoint.to_bytes())

    def load_checkpoint(self, map_location: str | torch.device = "cpu", name: str = CHECKPOINT) -> Checkpoint:
        path = self.file(name)
        if not path.is_file():
            raise CheckpointError(f"{path} does not exist; train first, with run_dir='{self.path}'")
        return Checkpoint.from_bytes(path.read_bytes(), path, map_location)

