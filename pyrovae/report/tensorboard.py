"""TensorBoard events of a run, in ``RUN/tensorboard/``: metrics, pictures, posterior means, the projector.

Written while training with ``tensorboard=True``, or afterwards by ``pyrovae plot RUN --tensorboard``: every
epoch's metrics as scalars; now and then the sample and reconstruction grids and histograms of the posterior
means; at the end, the posterior means in the Embedding Projector. Event files are appended while training
runs, the one exception to the whole-file writes of :mod:`pyrovae.files`. Nothing here draws from torch's
random streams, so a run trains the same with or without TensorBoard.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pyrovae.data.datasets import Split, as_floats
from pyrovae.model.vae import VAE
from pyrovae.report.latents import encoder_means
from pyrovae.report.plots import reconstruction_tiles, sample_tiles
from pyrovae.runs.rundir import TENSORBOARD

INSTALL = "pip install pyrovae[tensorboard]"
"""The command that adds the optional ``tensorboard`` package."""
EMBEDDING_MAX = 10_000
"""Most validation images whose posterior means go to the Embedding Projector."""
EMBEDDING_TAG = "posterior_means"
"""The Embedding Projector's name for them."""


def check_installed() -> None:
    """Raise ``ValueError`` naming the pip command unless the ``tensorboard`` package can be imported."""
    try:
        import tensorboard  # noqa: F401 (only whether it is there)
    except ImportError:
        raise ValueError(f"tensorboard=True needs the tensorboard package, which is not installed; add it with "
                         f"`{INSTALL}`") from None


def picture_epoch(epoch: int, epochs: int, every: int) -> bool:
    """Whether the pictures and histograms are written at ``epoch``: the first, the last, every ``every``-th."""
    return epoch == 1 or epoch == epochs or epoch % every == 0


class EventLog:
    """The event files of one run folder, opened for appending; close it (or use it as a context manager)."""

    def __init__(self, run_dir: str | Path, image_shape: Sequence[int]):
        check_installed()
        from torch.utils.tensorboard import SummaryWriter

        self.folder = Path(run_dir) / TENSORBOARD
        self.image_shape = tuple(image_shape)
        self.writer = SummaryWriter(str(self.folder))

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.writer.close()

    def epoch(self, row: dict[str, Any], vae: VAE, val: Split, epochs: int, every: int) -> None:
        """What training writes after each epoch: the row's metrics and, at times, the pictures and histograms."""
        self.metrics(row)
        if picture_epoch(row["epoch"], epochs, every):
            self.pictures(vae, val, row["epoch"])

    def metrics(self, row: dict[str, Any]) -> None:
        """The numbers of one ``metrics.jsonl`` row as scalars at its epoch, written out at once."""
        for name, value in row.items():
            if name != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"metrics/{name}", value, row["epoch"])
        self.writer.flush()

    @torch.no_grad()
    def pictures(self, vae: VAE, val: Split, epoch: int) -> None:
        """Sample and reconstruction grids, and a histogram of the posterior means per latent dimension."""
        y = None if vae.classifier is not None else val.y  # a classifier's VAE reconstructs at its own guess
        x = as_floats(val.x)
        for name, tiles in (("samples", sample_tiles(vae)), ("reconstructions", reconstruction_tiles(vae, x, y=y))):
            grid = tiles.grid(self.image_shape)
            self.writer.add_image(f"pictures/{name}", grid, epoch, dataformats="HW" if grid.ndim == 2 else "HWC")
        means = encoder_means(vae, x).cpu()
        for i in range(vae.z_dim):
            self.writer.add_histogram(f"posterior_mean/z{i}", means[:, i], epoch)
        self.writer.flush()

    @torch.no_grad()
    def projector(self, vae: VAE, val: Split, epoch: int) -> None:
        """The posterior means of up to :data:`EMBEDDING_MAX` validation images, with labels and a sprite."""
        vae.eval()
        x, labels = as_floats(val.x[:EMBEDDING_MAX]), val.y[:EMBEDDING_MAX].cpu()
        self.writer.add_embedding(encoder_means(vae, x).cpu(), metadata=labels.tolist(),
                                  label_img=x.cpu().reshape(len(x), *self.image_shape), global_step=epoch,
                                  tag=EMBEDDING_TAG)
        self.writer.flush()


def write_run_events(run_dir: str | Path, vae: VAE, val: Split, metrics: Sequence[dict[str, Any]],
                     image_shape: Sequence[int]) -> Path:
    """The events training with ``tensorboard=True`` writes, for a run that exists, in place of those in
    ``run_dir/tensorboard`` (kept, the scalars would show twice); returns that folder."""
    check_installed()  # before the old events go
    shutil.rmtree(Path(run_dir) / TENSORBOARD, ignore_errors=True)
    epoch = metrics[-1]["epoch"] if metrics else 0
    with EventLog(run_dir, image_shape) as events:
        for row in metrics:
            events.metrics(row)
        events.pictures(vae, val, epoch)
        events.projector(vae, val, epoch)
    return events.folder
