"""How many bytes a computation allocates, measured by running it, on any device.

The importance-sampled log-likelihood splits its work into chunks that fit a memory
budget. Rather than guess what a user's prior or likelihood allocates per sample, it
runs a tiny probe under :class:`AllocationCounter` and scales up. The count sums every
new tensor created, freed or not, so it bounds the peak from above.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class AllocationCounter(TorchDispatchMode):
    """Adds up the bytes of the tensors each operator creates (views and in-place results excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.bytes += t.untyped_storage().nbytes()
        return out


def bytes_allocated(fn: Callable[[], Any]) -> int:
    """The bytes ``fn()`` allocates in all (an upper bound on its peak memory)."""
    with AllocationCounter() as counter:
        fn()
    return counter.bytes
