"""Reading a trained run back: its model, data, metrics and config."""


from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from pyrovae.data.datasets import Dataset
from pyrovae.model.build import build_vae
from pyrovae.model.config import ModelConfig
from pyrovae.model.vae import VAE
from pyrovae.runs.rundir import CONFIG, CheckpointError, RunDir


@dataclasses.dataclass
class LoadedRun:
    """A trained run, read back by :func:`load_run`."""

    vae: VAE
    """The trained model, in eval mode, on the device asked for."""
    data: Dataset | None
    """The dataset as the run configured it (splits, binarization, hidden labels), on the same device; ``None``
    when loaded with ``data=False``."""
    metrics: list[dict[str, Any]]
    """The rows of ``metrics.jsonl``, one per epoch."""
    config: dict[str, Any]
    """``config.json`` as a dict, section by section: ``model``, ``data``, ``train``..."""


def load_run(path: str | Path, device: str | torch.device = "cpu", data: bool = True) -> LoadedRun:
    """Read a run directory back: its VAE, dataset, metrics and config, as a notebook cell wants them.

    ``data=False`` skips the dataset (``pyrovae sample`` needs none, and mnist may not be on
    this machine). A folder that is not a run, a damaged file, or a run trained in Python on
    arrays (no data settings) with ``data=True`` raise :class:`CheckpointError` naming the file;
    data files that cannot be found raise :class:`~pyrovae.data.datasets.DataNotFoundError`.
    """
    run = RunDir(path)
    config = run.read_config()
    model_config = run.settings(ModelConfig, "model")
    if data and config.get("data") is None:
        raise CheckpointError(f"{run.file(CONFIG)} has no data settings (the run was trained in Python on arrays); "
                              f"load it with data=False and bring the arrays yourself")
    state = run.load_checkpoint(map_location=device)
    metrics = run.read_metrics()
    vae = build_vae(model_config)
    run.restore(state, vae)
    dataset = run.load_data().to(device) if data else None
    return LoadedRun(vae=vae.to(device).eval(), data=dataset, metrics=metrics, config=config)
