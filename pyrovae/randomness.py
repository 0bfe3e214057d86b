"""Random state: saved with a checkpoint, fixed for a block of draws, or derived from a seed and keys.

A checkpoint's state is Pyro's plus the GPUs'. Numpy's key array travels as an int64 tensor, because
``torch.load(weights_only=True)`` refuses numpy arrays and uint32 tensors do not pickle.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyro.util
import torch


def rng_state() -> dict[str, Any]:
    """Pyro's random state, and every GPU's when there are GPUs, in a form ``weights_only`` loading accepts."""
    state = pyro.util.get_rng_state()
    name, keys, *position = state["numpy"]
    state["numpy"] = (name, torch.from_numpy(keys.astype(np.int64)), *position)
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a state from :func:`rng_state` (or torch's alone), wherever its tensors were loaded."""
    if "numpy" not in state:
        torch.set_rng_state(state["torch"].cpu())
    else:
        name, keys, *position = state["numpy"]
        pyro.util.set_rng_state({**state, "torch": state["torch"].cpu(),
                                 "numpy": (name, keys.cpu().numpy().astype(np.uint32), *position)})
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([gpu.cpu() for gpu in state["cuda"]])


def unchanged(device: torch.device) -> contextlib.AbstractContextManager:
    """Inside, torch's generators (CPU, and ``device``'s if a GPU) may draw; after, they are as they were."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


@contextmanager
def seeded(device: torch.device, seed: int) -> Iterator[None]:
    """Torch's generators (CPU, and ``device``'s if a GPU) start from ``seed`` inside, and are restored after."""
    with unchanged(device):
        torch.manual_seed(seed)
        yield


def derived_seed(seed: int, *keys: int) -> int:
    """A well-mixed seed for the stream named by ``keys`` (an epoch, a block), independent of the others."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(2, np.uint64)[0] >> 1)
