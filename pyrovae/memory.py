"""How many bytes a computation allocates, measured by running it, on any device.

The importance-sampled log-likelihood splits its work into chunks that fit a memory
budget. Rather than guess what a user's prior or likelihood allocates per sample, it
runs a tiny probe under :class:`AllocationCounter` and scales up. The count sums every
new tensor created, freed or not, so it bounds the peak from above. Training's memory
estimate (:mod:`pyrovae.footprint`) follows the tensors' lives too, to find the peak.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class AllocationCounter(TorchDispatchMode):
    """Adds up the bytes of the storages each operator creates (views and in-place results excluded).

    ``bytes`` counts every one created; ``timeline`` the bytes of them alive after each
    operator, each followed until it is freed (a storage's Python object lives exactly as
    long as the storage does).
    """

    def __init__(self) -> None:
        super().__init__()
        self.bytes = self.live = 0
        self.timeline: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None) -> Any:
        out = func(*args, **(kwargs or {}))
        seen = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                self._created(t.untyped_storage())
        self.timeline.append(self.live)
        return out

    def _created(self, storage: torch.UntypedStorage) -> None:
        size = storage.nbytes()
        self.bytes += size
        self.live += size
        weakref.finalize(storage, self._freed, size)

    def _freed(self, size: int) -> None:
        self.live -= size


def allocations(fn: Callable[[], Any]) -> AllocationCounter:
    """The count of what ``fn()`` allocated: in all (``bytes``) and alive after each operator (``timeline``)."""
    with AllocationCounter() as counter:
        fn()
    return counter


def bytes_allocated(fn: Callable[[], Any]) -> int:
    """The bytes ``fn()`` allocates in all (an upper bound on its peak memory)."""
    return allocations(fn).bytes
