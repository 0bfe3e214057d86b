"""Will it fit? Memory estimates made before any work, and what running out of memory looks like.

Training holds every parameter four times: the weights, their gradients and Adam's two
moment estimates. :func:`model_bytes` counts them from a :class:`~pyrovae.build.ModelConfig`
alone, by building the model on PyTorch's ``meta`` device, which allocates nothing, so
``z_dim=10**9`` is counted in milliseconds instead of failing in the allocator. What one
step holds at its peak grows with the examples times the particles; :func:`peak_at`
extrapolates it from two small probes (:func:`~pyrovae.memory.allocations`), as the
log-likelihood sizes its chunks. Both are compared with
:func:`free_bytes` of the device, and a setting that cannot fit is refused by
:class:`TooBig`, naming the setting that grew it most.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

import psutil
import torch
from torch import nn

from pyrovae.build import ModelConfig, build_posterior, build_vae
from pyrovae.memory import allocations
from pyrovae.settings import SettingError

log = logging.getLogger(__name__)

TRAINING_COPIES = 4
"""Copies of every parameter that training holds: the weights, their gradients, Adam's two moments."""
PROBE_SIZES = (2, 4)
"""The two small sizes at which :func:`linear_bytes` runs its probe."""
ALLOCATOR_FAILURE = re.compile(r"out of memory|can't allocate memory|you tried to allocate", re.IGNORECASE)
"""How allocators word a failed allocation in a plain ``RuntimeError`` (the CPU's ``alloc_cpu.cpp``, CUDA's)."""


class TooBig(SettingError):
    """A setting asks for more memory than the device has; raised before any work."""


class OutOfMemory(MemoryError):
    """Memory ran out while working, although the estimate allowed the settings; says what was kept.

    ``settings`` are those the message suggests lowering.
    """

    def __init__(self, message: str, settings: Collection[str] = ()):
        super().__init__(message)
        self.settings = tuple(settings)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a failed allocation: ``torch.OutOfMemoryError``, ``MemoryError`` or an allocator's
    ``RuntimeError``."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and ALLOCATOR_FAILURE.search(str(error)) is not None)


def free_bytes(device: torch.device) -> int:
    """Memory a new allocation can still get on ``device``.

    On a GPU, what the driver reports free plus what PyTorch's caching allocator holds
    unused; on the CPU, the RAM the operating system reports available.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return psutil.virtual_memory().available


def where(device: torch.device) -> str:
    """The device as a message names it."""
    return "this machine" if device.type == "cpu" else f"the GPU {device}"


def in_bytes(count: float) -> str:
    """``count`` bytes in decimal units, two or three significant digits: ``310 GB``, ``12,800 TB``."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if count >= size:
            value = count / size
            return f"{value:,.0f} {unit}" if value >= 1000 else f"{value:.3g} {unit}"
    return f"{count / 1e3:.3g} kB"


def parameter_bytes(module: nn.Module) -> int:
    """The bytes of ``module``'s parameters (one copy)."""
    return sum(p.numel() * p.element_size() for p in module.parameters())


def model_bytes(config: ModelConfig) -> int:
    """The bytes training holds for the parameters of the model ``config`` describes (weights, gradients, Adam)."""
    with torch.device("meta"):  # shapes only: no storage is allocated
        vae = build_vae(config)
    return TRAINING_COPIES * parameter_bytes(vae)


def flow_bytes(config: ModelConfig) -> int:
    """The bytes training holds for the parameters of a flow guide's networks, without building them at full size.

    Pyro's autoregressive networks cannot be built on the ``meta`` device, and their layers
    are all as wide as a multiple of the latent size, so their parameter count is a quadratic
    in it: counted exactly on small flows of 2, 3 and 4 latents, and extrapolated (Newton's
    form, from the count's first and second differences).
    """
    if config.guide == "diagonal":
        return 0
    latent_sizes = [config.z_dim] if config.latent_layers == 1 else [config.z_dim, config.lower_dim]
    at_2, at_3, at_4 = (parameter_bytes(build_posterior(config, size)) for size in (2, 3, 4))
    first, second = at_3 - at_2, at_4 - 2 * at_3 + at_2
    return TRAINING_COPIES * sum(at_2 + first * (z - 2) + second * (z - 2) * (z - 3) // 2 for z in latent_sizes)


def peak_at(step: Callable[[int], Any], size: float) -> float:
    """About the most bytes ``step(size)`` holds at once, from probes at two small sizes.

    When the probes run the same operators in the same order, the live bytes at each
    moment are fixed + per_unit * size, a line through the two probes' values, and the
    peak at ``size`` is the largest of those lines there. (A peak of the probes alone would
    miss it: at a few examples the gradients outweigh the activations.) When the operators
    change with the size (Pyro's enumeration picks its contraction order by the shapes),
    the line goes through all that each probe allocated, freed or not: an upper bound.
    """
    step(PROBE_SIZES[0])  # a first call may run one-off operators
    small, large = (allocations(lambda n=n: step(n)) for n in PROBE_SIZES)

    def at_size(at_small: float, at_large: float) -> float:
        return at_small + (at_large - at_small) * (size - PROBE_SIZES[0]) / (PROBE_SIZES[1] - PROBE_SIZES[0])

    if len(small.timeline) == len(large.timeline):
        return max(map(at_size, small.timeline, large.timeline))
    return at_size(small.bytes, large.bytes)


SIZE_DEFAULTS = {"z_dim": ModelConfig.z_dim, "hidden": max(ModelConfig.hidden),
                 "prior_components": ModelConfig.prior_components}
"""The defaults of the model settings that set its memory."""


def model_sizes(config: ModelConfig) -> dict[str, int]:
    """The model settings that set its memory, by name (the widest layer stands for ``hidden``)."""
    sizes = {"z_dim": config.z_dim, "hidden": max(config.hidden, default=1)}
    if config.prior in ("mixture", "vamp"):
        sizes["prior_components"] = config.prior_components
    return sizes


def largest(sizes: Mapping[str, int], defaults: Mapping[str, int]) -> str:
    """The setting furthest above its default, the likeliest slip of a digit."""
    return max(sizes, key=lambda name: sizes[name] / defaults[name])


def check_model_fits(config: ModelConfig, device: torch.device) -> None:
    """Refuse a model whose parameters cannot be trained in ``device``'s free memory, before building it.

    A flow guide's networks are counted first (:func:`flow_bytes`), since counting the whole
    model builds them for real (on the CPU).
    """
    sizes, free = model_sizes(config), free_bytes(device)
    culprit = largest(sizes, SIZE_DEFAULTS)
    needed = flow_bytes(config)  # first: counting the whole model builds the flows for real
    if needed <= free:
        needed = model_bytes(config)
    if needed > free:
        raise TooBig(culprit, f"{culprit}={sizes[culprit]} needs about {in_bytes(needed)} for the weights, their "
                              f"gradients and Adam's moments; {where(device)} has {in_bytes(free)} free; "
                              f"lower {culprit}")
