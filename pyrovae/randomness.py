"""Random state: saved with a checkpoint, fixed for a block of draws, or derived from a seed and keys.

A checkpoint's state is Pyro's plus the GPUs'. Numpy's key array travels as an int64 tensor, because
``torch.load(weights_only=True)`` refuses numpy arrays and uint32 tensors do not pickle.
"""

from __future__ import annotations

import contextlib
import random
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
        pyro.util.set_rng_state(_as_pyro(state))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([gpu.cpu() for gpu in state["cuda"]])


def rng_state_problem(state: Any) -> str | None:
    """What keeps :func:`set_rng_state` from restoring ``state`` (and each rank's), found by restoring it into
    scratch generators; ``None`` if nothing does. A checkpoint's random state is checked so before a resume."""
    if not isinstance(state, dict) or not torch.is_tensor(state.get("torch")):
        return "it lacks torch's state"
    try:
        torch.Generator().set_state(state["torch"].cpu())
        if "numpy" in state:
            pyro_state = _as_pyro(state)
            random.Random().setstate(pyro_state["random"])
            np.random.RandomState().set_state(pyro_state["numpy"])
    except (AttributeError, IndexError, KeyError, RuntimeError, TypeError, ValueError) as error:
        return f"{type(error).__name__} restoring it"
    if not all(torch.is_tensor(gpu) and gpu.dtype == torch.uint8 for gpu in state.get("cuda", [])):
        return "its GPU states are not byte tensors"
    ranks = state.get("ranks", [])
    if not isinstance(ranks, list):
        return "its ranks are not a list"
    return next((problem for problem in map(rng_state_problem, ranks) if problem), None)


def _as_pyro(state: dict[str, Any]) -> dict[str, Any]:
    """A state from :func:`rng_state` as ``pyro.util.set_rng_state`` takes it: on the CPU, numpy's keys as uint32."""
    name, keys, *position = state["numpy"]
    return {**state, "torch": state["torch"].cpu(), "numpy": (name, keys.cpu().numpy().astype(np.uint32), *position)}


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
