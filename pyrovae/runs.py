"""Run directories: ``config.json``, ``checkpoint.pt``, ``metrics.jsonl`` and pictures.

Checkpoints hold only tensors and plain containers, are loaded with
``torch.load(weights_only=True)`` (so a crafted file cannot run code), and are written
to a temporary file first and renamed, so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from pyrovae.build import ModelConfig, build_vae
from pyrovae.vae import VAE

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
EVAL = "eval.json"


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


def _write_atomically(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunDir:
    """One training run's folder and the files in it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def create(self) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def write_config(self, config: dict[str, Any]) -> None:
        text = json.dumps(config, indent=2, sort_keys=True).encode()
        _write_atomically(self.file(CONFIG), lambda f: f.write(text))

    def read_config(self) -> dict[str, Any]:
        path = self.file(CONFIG)
        if not path.is_file():
            raise CheckpointError(f"{path} does not exist; is {self.path} a pyrovae run directory "
                                  f"(made by `pyrovae train --out {self.path}`)?")
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{path} is not valid JSON ({error}); restore it or train again") from None

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.file(METRICS), "a") as f:
            f.write(json.dumps(row) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.file(METRICS)
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, last_epoch: int) -> None:
        """Drop metric rows after ``last_epoch`` (written after the checkpoint a resume starts from)."""
        rows = [row for row in self.read_metrics() if row["epoch"] <= last_epoch]
        text = "".join(json.dumps(row) + "\n" for row in rows).encode()
        _write_atomically(self.file(METRICS), lambda f: f.write(text))

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        _write_atomically(self.file(CHECKPOINT), lambda f: torch.save(state, f))

    def load_checkpoint(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        path = self.file(CHECKPOINT)
        if not path.is_file():
            raise CheckpointError(f"{path} does not exist; train first with `pyrovae train --out {self.path}`")
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except Exception as error:  # truncated zip, random bytes, or a pickle asking for code
            raise CheckpointError(
                f"{path} is not a readable pyrovae checkpoint ({type(error).__name__}); it may be "
                f"truncated, corrupt or from an untrusted source. Train again or restore a copy."
            ) from None

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        text = json.dumps(data, indent=2).encode()
        _write_atomically(self.file(name), lambda f: f.write(text))


def load_run(path: str | Path, device: str | torch.device = "cpu") -> tuple[VAE, dict[str, Any]]:
    """The trained VAE of a run directory (in eval mode, on ``device``) and its config dict."""
    run = RunDir(path)
    config = run.read_config()
    if not config.get("model"):
        raise CheckpointError(f"{run.file(CONFIG)} has no model settings (the VAE was built from "
                              f"custom parts); rebuild it in Python and load {CHECKPOINT} yourself")
    try:
        vae = build_vae(ModelConfig(**config["model"]))
    except TypeError as error:
        raise CheckpointError(f"{run.file(CONFIG)} has model settings this version cannot read ({error})") from None
    state = run.load_checkpoint(map_location=device)
    try:
        vae.load_state_dict(state["model"])
    except (KeyError, RuntimeError, TypeError) as error:
        raise CheckpointError(f"{run.file(CHECKPOINT)} does not match {run.file(CONFIG)} "
                              f"({type(error).__name__}); train again") from None
    return vae.to(device).eval(), config
