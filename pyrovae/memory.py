"""How many bytes a computation allocates, measured by running it, on any device.

Rather than guess what a user's prior or likelihood allocates, a tiny probe runs under :class:`AllocationCounter`
and the count is scaled up to the real size.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Collection
from typing import Any

import psutil
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from tqdm import tqdm

from pyrovae.settings import SettingError

PROBE_SIZES = (2, 4)
"""The two small sizes at which :func:`peak_at` runs its probe."""
ALLOCATOR_FAILURE = re.compile(r"out of memory|can't allocate memory|you tried to allocate", re.IGNORECASE)
"""How allocators word a failed allocation in a plain ``RuntimeError`` (the CPU's ``alloc_cpu.cpp``, CUDA's)."""


class AllocationCounter(TorchDispatchMode):
    """Adds up the bytes of the storages each operator creates (views and in-place results excluded): ``bytes``
    all of them, ``timeline`` those alive after each operator."""

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


class TooBig(SettingError):
    """A setting asks for more memory than the device has; raised before any work."""


class OutOfMemory(MemoryError):
    """Memory ran out while working, although the estimate allowed the settings (those the message suggests
    lowering)."""

    def __init__(self, message: str, settings: Collection[str] = ()):
        super().__init__(message)
        self.settings = tuple(settings)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a failed allocation, whatever its type."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and ALLOCATOR_FAILURE.search(str(error)) is not None)


def free_bytes(device: torch.device) -> int:
    """Memory a new allocation can still get on ``device`` (on a GPU, with what PyTorch's cache holds unused)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return psutil.virtual_memory().available


def where(device: torch.device) -> str:
    """The device as a message names it."""
    return "this machine" if device.type == "cpu" else f"the GPU {device}"


def in_bytes(count: float) -> str:
    """``count`` bytes in SI units, as tqdm writes sizes: ``310GB``, ``1.23kB``."""
    return tqdm.format_sizeof(count, "B")


def parameter_bytes(module: nn.Module) -> int:
    """The bytes of ``module``'s parameters (one copy)."""
    return sum(p.numel() * p.element_size() for p in module.parameters())


def peak_at(step: Callable[[int], Any], size: float) -> float:
    """About the most bytes ``step(size)`` holds at once, from probes at two small sizes.

    When the probes run the same operators, the live bytes at each moment are fixed + per_unit * size, and the peak
    is the largest of those lines at ``size``. Otherwise (Pyro's enumeration orders its contraction by the shapes),
    the line goes through all that each probe allocated: an upper bound.
    """
    step(PROBE_SIZES[0])  # a first call may run one-off operators
    small, large = (allocations(lambda n=n: step(n)) for n in PROBE_SIZES)

    def at_size(at_small: float, at_large: float) -> float:
        return at_small + (at_large - at_small) * (size - PROBE_SIZES[0]) / (PROBE_SIZES[1] - PROBE_SIZES[0])

    if len(small.timeline) == len(large.timeline):
        return max(map(at_size, small.timeline, large.timeline))
    return at_size(small.bytes, large.bytes)
