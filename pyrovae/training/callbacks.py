"""Work done at the ends of :func:`~pyrovae.training.loop.fit`'s epochs, outside the loop itself.

A callback overrides the hooks it needs. :meth:`Callback.epoch_trained` runs after an epoch's
steps, before validation and the checkpoint, so it may change the model;
:meth:`Callback.epoch_done` gets the epoch's metrics row once it is saved;
:meth:`Callback.training_done` gets the rows trained, under the run's lock. A callback is a
context manager around the whole loop, for the files it keeps open.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pyrovae.data.datasets import Split
from pyrovae.inference.semi_supervised import place_class_means
from pyrovae.model.vae import VAE
from pyrovae.runs.rundir import RunDir


class Callback:
    """Does nothing; subclasses override the hooks they need. ``files`` names what it writes into the run
    directory, which ``overwrite=True`` deletes with the previous run."""

    files: tuple[str, ...] = ()

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
    """Without any label, moves the class means onto k-means clusters of the encoded images after the first epoch
    (see :func:`~pyrovae.inference.semi_supervised.place_class_means`)."""

    def __init__(self, vae: VAE, images: torch.Tensor, seed: int):
        self.vae, self.images, self.seed = vae, images, seed

    def epoch_trained(self, epoch: int) -> None:
        if epoch == 1:
            place_class_means(self.vae, self.images, self.seed)


class TensorBoardEvents(Callback):
    """Writes TensorBoard's events into ``RUN/tensorboard``: the metrics every epoch, pictures and histograms
    every ``every`` epochs, and the Embedding Projector at the end."""

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
