"""Work done at the ends of :func:`~pyrovae.training.loop.fit`'s epochs, outside the loop itself.

Each hook of :class:`Callback` says when it runs; a callback is a context manager around the whole loop, for the
files it keeps open, and setting its ``stop`` ends training.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from pyrovae.data.datasets import Split
from pyrovae.files import write_atomically
from pyrovae.inference.semi_supervised import place_class_means
from pyrovae.model.vae import VAE
from pyrovae.runs.rundir import BEST, CHECKPOINT, RunDir

log = logging.getLogger(__name__)


class Callback:
    """Does nothing; subclasses override the hooks they need. ``files`` names what it writes into the run
    directory, which ``overwrite=True`` deletes with the previous run; ``stop`` ends training after this epoch."""

    files: tuple[str, ...] = ()
    stop = False

    def __enter__(self) -> Callback:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def epoch_trained(self, epoch: int) -> None:
        """After the steps of ``epoch``, before it is validated and saved."""

    def epoch_done(self, row: dict[str, float]) -> None:
        """After ``row``, the epoch's metrics, is final and saved in the checkpoint."""

    def training_done(self, trained: list[dict[str, float]]) -> None:
        """After the last epoch (``trained`` holds the rows of this call, possibly none)."""


class MetricsFile(Callback):
    """Appends each epoch's row to the run's ``metrics.jsonl``."""

    def __init__(self, run: RunDir):
        self.run = run

    def epoch_done(self, row: dict[str, float]) -> None:
        self.run.append_metrics(row)


class PlaceClassMeans(Callback):
    """Without any label, moves the class means onto k-means clusters after epoch 1 (:func:`place_class_means`)."""

    def __init__(self, vae: VAE, images: torch.Tensor, seed: int):
        self.vae, self.images, self.seed = vae, images, seed

    def epoch_trained(self, epoch: int) -> None:
        if epoch == 1:
            place_class_means(self.vae, self.images, self.seed)


class TensorBoardEvents(Callback):
    """Writes TensorBoard's events into ``RUN/tensorboard``, pictures and histograms every ``every`` epochs."""

    def __init__(self, run_dir: Path, vae: VAE, val: Split, image_shape: tuple[int, ...], epochs: int, every: int):
        from pyrovae.report.tensorboard import EventLog  # imported when asked for: it brings matplotlib

        self.events = EventLog(run_dir, image_shape)
        self.vae, self.val, self.epochs, self.every = vae, val, epochs, every

    def __exit__(self, *exc: Any) -> None:
        self.events.close()

    def epoch_done(self, row: dict[str, float]) -> None:
        self.events.epoch(row, self.vae, self.val, self.epochs, self.every)

    def training_done(self, trained: list[dict[str, float]]) -> None:
        if trained:
            self.events.projector(self.vae, self.val, int(trained[-1]["epoch"]))


class BestEpoch(Callback):
    """Follows the lowest validation -ELBO (``history``: the rows of a resumed run): with ``run``, copies the checkpoint
    of each epoch that lowers it to ``best.pt``; with ``patience``, stops after that many epochs without."""

    def __init__(self, history: list[dict[str, float]], run: RunDir | None = None, patience: int | None = None):
        self.run, self.patience, self.best, self.stale = run, patience, float("inf"), 0
        for row in history:
            self.improves(row)

    def improves(self, row: dict[str, float]) -> bool:
        """Count ``row`` in; whether its validation -ELBO is the lowest so far."""
        better = row["val_neg_elbo"] < self.best
        self.best, self.stale = (row["val_neg_elbo"], 0) if better else (self.best, self.stale + 1)
        return better

    def epoch_done(self, row: dict[str, float]) -> None:
        if self.improves(row) and self.run is not None:
            write_atomically(self.run.file(BEST), self.run.file(CHECKPOINT).read_bytes())
        self.stop = self.patience is not None and self.stale >= self.patience
        if self.stop:
            log.warning(f"early_stop={self.patience}: training stops after epoch {row['epoch']:.0f}, the validation "
                        f"-ELBO not below {self.best:.3f} for {self.stale} epochs")
