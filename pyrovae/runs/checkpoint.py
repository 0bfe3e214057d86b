"""What a checkpoint holds: :class:`Checkpoint`, the one schema of ``checkpoint.pt``.

The state is a flat dict of tensors and plain containers, so ``torch.load(weights_only=True)``
reads it and a crafted file cannot run code. The file wraps the state's bytes with their SHA-256,
so that a damaged file is told apart (an integrity check, not a signature). A file that fails the
check, lacks an entry, or has one of the wrong type or shape is refused as :class:`CheckpointError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from pathlib import Path
from typing import Any

import torch

from pyrovae.randomness import rng_state_problem

log = logging.getLogger(__name__)

FORMAT = "pyrovae checkpoint"
"""The ``format`` entry of a checkpoint file, beside ``sha256`` and ``payload`` (the state's bytes)."""
METRICS_KEYS = ("epoch", "train_loss", "kl_weight", "skipped_batches", "val_neg_elbo", "epoch_seconds")
"""The numbers every row of ``metrics.jsonl`` holds."""


class CheckpointError(ValueError):
    """A checkpoint or config file is missing, truncated or not one pyrovae wrote."""


def _entry(kind: type | tuple[type, ...], **default: Any) -> Any:
    return dataclasses.field(metadata={"kind": kind}, **default)


@dataclasses.dataclass
class Progress:
    """How far training has come: where a resumed run continues. A fresh run starts from ``Progress(kl_weight)``."""

    kl_weight: torch.Tensor = _entry(torch.Tensor)
    """The KL weight reached (the balance goes on from it; schedules recompute it)."""
    epoch: int = _entry(int, default=0)
    """Complete epochs."""
    metrics: list[dict[str, Any]] = _entry(list, default_factory=list)
    """One row per complete epoch, as ``metrics.jsonl`` holds them."""
    skipped: int = _entry(int, default=0)
    """Non-finite batches skipped so far (``skip_nonfinite``)."""
    partial: dict[str, Any] | None = _entry((dict, type(None)), default=None)
    """The position inside an interrupted epoch, or ``None`` after a complete one."""


@dataclasses.dataclass
class Checkpoint:
    """The trained state of a run: the weights, the optimizer's state, every random stream, and the progress."""

    model: dict[str, torch.Tensor] = _entry(dict)
    optimizer: dict[str, Any] = _entry(dict)
    rng: dict[str, Any] = _entry(dict)
    progress: Progress = _entry(Progress)

    def to_bytes(self) -> bytes:
        """The file's bytes: the state as ``torch.save`` writes it, wrapped with its SHA-256."""
        payload = _saved(self.to_state())
        return _saved({"format": FORMAT, "sha256": hashlib.sha256(payload).hexdigest(),
                       "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)})

    @classmethod
    def from_bytes(cls, data: bytes, path: Path, map_location: str | torch.device = "cpu") -> Checkpoint:
        """The checkpoint in ``data``, the bytes of ``path``: its digest checked, then its entries. A file of
        pyrovae 0.3.0 has no digest; it loads, with a note."""
        wrapped = _loaded(data, path)
        digested = isinstance(wrapped, dict) and wrapped.get("format") == FORMAT
        if digested:
            payload = wrapped.get("payload")
            data = payload.numpy().tobytes() if torch.is_tensor(payload) and payload.dtype == torch.uint8 else b""
            if hashlib.sha256(data).hexdigest() != wrapped.get("sha256"):
                raise CheckpointError(f"{path} does not match its SHA-256 digest: the file is damaged; restore a copy "
                                      f"or train again")
        checkpoint = cls.from_state(_loaded(data, path, map_location), path)
        if not digested:
            log.warning(f"{path} has no SHA-256 digest (pyrovae 0.3.0 wrote it), so damage to it would go unseen; "
                        f"resuming its training rewrites it with one")
        return checkpoint

    def to_state(self) -> dict[str, Any]:
        """The flat dict ``torch.save`` writes: the progress's entries beside the weights."""
        return {"model": self.model, "optimizer": self.optimizer, "rng": self.rng, **vars(self.progress)}

    @classmethod
    def from_state(cls, state: Any, path: Path) -> Checkpoint:
        """The checkpoint ``torch.load`` read from ``path``, every entry's type checked."""
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} holds a {type(state).__name__}, not a pyrovae checkpoint; "
                                  f"point to a run directory that `pyrovae train` wrote")
        for name, kind in ENTRIES.items():
            if not isinstance(state.get(name), kind):
                problem = "lacks" if name not in state else "has a malformed"
                raise CheckpointError(f"{path} {problem} entry {name!r}, so it is not a pyrovae checkpoint; "
                                      f"train again or restore a copy")
        weight = state["kl_weight"]
        problems = {"model": _weights_problem(state["model"]), "rng": rng_state_problem(state["rng"]),
                    "metrics": next(filter(None, map(metrics_row_problem, state["metrics"])), None),
                    "kl_weight": None if weight.numel() == 1 and weight.isfinite().all() and weight >= 0
                    else "not one finite number >= 0",
                    **{name: "a negative count" for name in ("epoch", "skipped") if state[name] < 0}}
        for name, problem in problems.items():
            if problem is not None:
                raise CheckpointError(f"{path} has a malformed entry {name!r} ({problem}); train again or restore "
                                      f"a copy")
        progress = Progress(**{field.name: state[field.name] for field in dataclasses.fields(Progress)})
        return cls(model=state["model"], optimizer=state["optimizer"], rng=state["rng"], progress=progress)


ENTRIES = {field.name: field.metadata["kind"]
           for field in (*dataclasses.fields(Checkpoint)[:-1], *dataclasses.fields(Progress))}
"""Every entry of ``checkpoint.pt`` and its type."""


def metrics_row_problem(row: Any) -> str | None:
    """What makes ``row`` no row of ``metrics.jsonl`` (an object with the numbers :data:`METRICS_KEYS`), or ``None``."""
    if not isinstance(row, dict):
        return "a row is not a JSON object"
    missing = [key for key in METRICS_KEYS if type(row.get(key)) not in (int, float)]
    return f"a row lacks the number {missing[0]!r}" if missing else None


def _weights_problem(weights: dict[str, Any]) -> str | None:
    """What makes ``weights`` no model's state dict (a tensor that is not one, or not finite), or ``None``."""
    for name, value in weights.items():
        if not torch.is_tensor(value):
            return f"{name} is not a tensor"
        if value.is_floating_point() and not value.isfinite().all():
            return f"{name} holds NaN or infinite weights"
    return None


def _saved(state: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _loaded(data: bytes, path: Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` of ``data``, the bytes of ``path``; anything it refuses is a
    :class:`CheckpointError`."""
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, random bytes, or a pickle asking for code
        raise CheckpointError(f"{path} is not a readable pyrovae checkpoint ({type(error).__name__}); it may be "
                              f"truncated, corrupt or from an untrusted source. Train again or restore a copy."
                              ) from None
