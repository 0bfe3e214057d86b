"""Reading a trained run back: its model (weights restored), its data as configured, its metrics and config."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from pyrovae.data.datasets import DataConfig, Dataset, load_dataset
from pyrovae.data.sources import check_unchanged
from pyrovae.data.tables import TableSchema
from pyrovae.model.build import build_vae
from pyrovae.model.config import ModelConfig
from pyrovae.model.vae import VAE
from pyrovae.runs.checkpoint import Checkpoint, CheckpointError
from pyrovae.runs.rundir import CHECKPOINT, CONFIG, RunDir
from pyrovae.settings import resolve_device


@dataclasses.dataclass
class LoadedRun:
    """A trained run, read back by :func:`load_run`."""

    vae: VAE
    """The trained model, in eval mode, on the device asked for."""
    data: Dataset | None
    """The dataset as the run configured it (splits, binarization, hidden labels), on the same device; ``None``
    when loaded with ``data=False``."""
    metrics: list[dict[str, Any]] | None
    """The rows of ``metrics.jsonl``, one per epoch; ``None`` when loaded with ``metrics=False``."""
    config: dict[str, Any]
    """``config.json`` as a dict, section by section: ``model``, ``data``, ``train``..."""


def load_run(path: str | Path, device: str | torch.device = "cpu", data: bool = True,
             metrics: bool = True) -> LoadedRun:
    """Read a run directory back: its VAE, dataset, metrics and config, as a notebook cell wants them.

    ``data=False`` skips the dataset (``pyrovae sample`` needs none, and mnist may not be on
    this machine), ``metrics=False`` the metrics. A folder that is not a run, a damaged file, or
    a run trained in Python on arrays (no data settings) with ``data=True`` raise
    :class:`CheckpointError` naming the file; data files that cannot be found raise
    :class:`~pyrovae.data.datasets.DataNotFoundError`; a device this machine lacks, ``ValueError``.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    if device.type == "cuda":  # a GPU this machine lacks is named, not blamed on the checkpoint
        resolve_device("cuda")
    run = RunDir(path)
    config = run.read_config()
    model_config = run.settings(ModelConfig, "model")
    if data and config.get("data") is None:
        raise CheckpointError(f"{run.file(CONFIG)} has no data settings (the run was trained in Python on arrays); "
                              f"load it with data=False and bring the arrays yourself")
    checkpoint = run.load_checkpoint(map_location=device)
    rows = run.read_metrics() if metrics else None
    vae = build_vae(model_config)
    restore(run, checkpoint, vae)
    if model_config.columns is not None:  # a table: how it reads and writes the table's columns
        vae.schema = table_schema(run)
    dataset = load_data(run).to(device) if data else None
    return LoadedRun(vae=vae.to(device).eval(), data=dataset, metrics=rows, config=config)


def load_data(run: RunDir) -> Dataset:
    """The dataset ``run`` was trained on, as its ``config.json`` describes it, on the CPU.

    A file or folder named by a relative path is read where the run recorded it, whatever the
    working directory. Refused with :class:`~pyrovae.data.sources.SourceChanged` when the data
    read now differ from what the run recorded (shape, dtype or content hash; see
    :mod:`pyrovae.data.sources`).
    """
    config, recorded = run.settings(DataConfig, "data"), run.read_config().get("source")
    if recorded is not None and recorded.get("kind") in ("arrays", "image-folder", "table") and "path" in recorded:
        config = dataclasses.replace(config, dataset=recorded["path"])
    data = load_dataset(config, schema=table_schema(run))
    if recorded is not None and data.provenance is not None:
        check_unchanged(recorded, data.provenance)
    return data


def table_schema(run: RunDir) -> TableSchema | None:
    """How ``run`` encodes a table's columns (the ``table`` section of its ``config.json``), or ``None`` for images."""
    section = run.read_config().get("table")
    try:
        return None if section is None else TableSchema.from_json(section, f"{run.file(CONFIG)}, section 'table'")
    except ValueError as error:
        raise CheckpointError(str(error)) from None


def restore(run: RunDir, checkpoint: Checkpoint, vae: VAE, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load ``checkpoint``'s weights (and optimizer state) into ``vae``, refusing those of another model."""
    try:
        vae.load_state_dict(checkpoint.model)
        if optimizer is not None:
            optimizer.load_state_dict(checkpoint.optimizer)
    except (KeyError, RuntimeError, TypeError, ValueError) as error:
        raise CheckpointError(f"{run.file(CHECKPOINT)} does not match the model of {run.file(CONFIG)} "
                              f"({type(error).__name__}); train again or restore a copy") from None
