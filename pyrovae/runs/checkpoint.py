"""What a checkpoint holds: :class:`Checkpoint`, the one schema of ``checkpoint.pt``.

The file is a flat dict of tensors and plain containers, so ``torch.load(weights_only=True)``
reads it and a crafted file cannot run code. A file without every entry, or with one of the
wrong type, is refused as :class:`CheckpointError`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch


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
        if not all(torch.is_tensor(value) for value in state["model"].values()):
            raise CheckpointError(f"{path} has model weights that are not tensors; train again or restore a copy")
        progress = Progress(**{field.name: state[field.name] for field in dataclasses.fields(Progress)})
        return cls(model=state["model"], optimizer=state["optimizer"], rng=state["rng"], progress=progress)


ENTRIES = {field.name: field.metadata["kind"]
           for field in (*dataclasses.fields(Checkpoint)[:-1], *dataclasses.fields(Progress))}
"""Every entry of ``checkpoint.pt`` and its type."""
