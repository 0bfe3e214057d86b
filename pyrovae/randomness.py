"""Torch's random state: saved with a checkpoint, fixed for a block of draws, or derived from a seed and keys."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """The CPU generator's state, and every GPU's when there are GPUs (for a checkpoint)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a state from :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def seeded(device: torch.device, seed: int) -> Iterator[None]:
    """Torch's generators (CPU, and ``device``'s if a GPU) start from ``seed`` inside, and are restored after."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def derived_seed(seed: int, *keys: int) -> int:
    """A well-mixed seed for the stream named by ``keys`` (an epoch, a block), independent of the others."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(2, np.uint64)[0] >> 1)
