"""How much memory a model's parameters take, reckoned from its settings before it is built.

:func:`weight_bytes` counts in Python integers, which never overflow, so a crafted ``config.json`` asking for a
model of petabytes (or of images with 10^20 pixels) is refused in microseconds, naming the setting to lower.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

import torch

from pyrovae.memory import TooBig, free_bytes, in_bytes, where
from pyrovae.model.config import ModelConfig

SIZE_DEFAULTS = {"z_dim": ModelConfig.z_dim, "hidden": max(ModelConfig.hidden),
                 "prior_components": ModelConfig.prior_components}
"""The defaults of the model settings that set its memory."""
DATA_DEFAULTS = {"image_shape": math.prod(ModelConfig.image_shape), "num_classes": 10}
"""The pixels of the default images and the classes of the bundled datasets, for the data's share of that memory."""


def model_sizes(config: ModelConfig) -> dict[str, int]:
    """The model settings that set its memory, by name (the widest layer stands for ``hidden``)."""
    sizes = {"z_dim": config.z_dim, "hidden": max(config.hidden, default=1)}
    if config.prior in ("mixture", "vamp"):
        sizes["prior_components"] = config.prior_components
    return sizes


def largest(sizes: Mapping[str, int], defaults: Mapping[str, int]) -> str:
    """The setting furthest above its default, the likeliest slip of a digit."""
    return max(sizes, key=lambda name: sizes[name] / defaults[name])


def weight_bytes(config: ModelConfig) -> int:
    """The bytes of the weights of the model's dense layers, its convolutions' kernels and its prior: a lower bound
    on its parameters' memory that grows with every setting that sets it.

    The conv nets' dense layers meet 64 filters over a quarter of each side (at least 4 values a pixel), and their
    4x4 kernels go from the image's channels to 32 filters to 64, and back.
    """
    channels, height, width = config.image_shape
    pixels = math.prod(config.image_shape)
    image = pixels if config.net == "mlp" else 4 * height * width
    conditioned = (config.num_classes or 0) if config.decoder_conditioning else 0
    encoder = [image, *config.hidden, 2 * config.lower_dim]
    decoder = [config.lower_dim + conditioned, *reversed(config.hidden), image]
    count = sum(a * b for widths in (encoder, decoder) for a, b in itertools.pairwise(widths))
    if config.net == "conv":
        count += 2 * 4 * 4 * 32 * (channels + 64)
    if config.prior == "mixture":
        count += 2 * config.prior_components * config.z_dim
    elif config.prior == "vamp":
        count += config.prior_components * pixels
    elif config.prior == "class-means":
        count += (config.num_classes or 0) * config.z_dim
    return count * torch.get_default_dtype().itemsize


def refuse_beyond(config: ModelConfig, needed: int, device: torch.device, what: str) -> None:
    """Raise :class:`~pyrovae.memory.TooBig` if ``needed`` bytes (``what`` they hold) exceed ``device``'s free
    memory, naming the size setting of ``config`` furthest above its default."""
    free = free_bytes(device)
    if needed <= free:
        return
    sizes = {**model_sizes(config), "image_shape": math.prod(config.image_shape)}
    if config.num_classes:
        sizes["num_classes"] = config.num_classes
    culprit = largest(sizes, {**SIZE_DEFAULTS, **DATA_DEFAULTS})
    value = list(config.image_shape) if culprit == "image_shape" else sizes[culprit]
    raise TooBig(culprit, f"{culprit}={value} needs about {in_bytes(needed)} {what}; {where(device)} has "
                          f"{in_bytes(free)} free; lower {culprit}")
