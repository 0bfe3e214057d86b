"""Encoder, decoder and classifier networks: plain ``nn.Module``s that know nothing of Pyro.

An encoder maps images ``(..., D)`` to ``(loc, scale)`` of q(z|x) (or q(z|x, y)), and the context of a flow
posterior; a decoder maps latents ``(..., Z)`` to the likelihood's raw outputs; a classifier maps images to the
logits of q(y|x). Leading batch dimensions are kept, so the same nets serve ``(B, D)`` and ``(K, B, Z)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "leaky-relu": nn.LeakyReLU,
}

MIN_SCALE = 1e-3
"""Floor added to the posterior standard deviation, so log q(z|x) never divides by zero."""


def activation_layer(name: str) -> nn.Module:
    """A fresh activation module by name (one of :data:`ACTIVATIONS`)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}") from None


def mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Linear layers of the given sizes with an activation between them (none at the end)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i > 0:
            layers.append(activation_layer(activation))
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


def gaussian_parameters(h: torch.Tensor, context_dim: int = 0) -> tuple[torch.Tensor, ...]:
    """Split ``(..., 2Z + C)`` into ``loc``, a positive ``scale = softplus(.) + MIN_SCALE`` and, for ``context_dim``
    C > 0, the last C values: the context of a flow posterior."""
    z_dim = (h.shape[-1] - context_dim) // 2
    loc, raw_scale, context = h.split([z_dim, z_dim, context_dim], dim=-1)
    parameters = loc, F.softplus(raw_scale) + MIN_SCALE
    return (*parameters, context) if context_dim else parameters


def inverse_softplus(value: float) -> float:
    """The raw parameter whose softplus is ``value`` (to initialize a positive quantity)."""
    return math.log(math.expm1(value))


def label_table(num_classes: int, net: nn.Sequential) -> nn.Embedding | None:
    """For ``net`` read on ``[h, one_hot(y)]``: the first layer's one-hot columns, one row per class (none if 0).

    The rows start N(0, 1), far larger than ``nn.Linear``'s weights, so the label weighs in from the first step,
    which a model trained with few labels needs to tell the classes apart (see docs/benchmarks.md).
    """
    return nn.Embedding(num_classes, net[0].out_features) if num_classes else None


def with_labels(net: nn.Sequential, labels: nn.Embedding | None, h: torch.Tensor,
                y: torch.Tensor | None) -> torch.Tensor:
    """``net`` on ``[h, one_hot(y)]``, as W [h, one_hot(y)] = W_h h + W_y[y]; on ``h`` alone without a table.

    ``h`` passes the first layer once, however many labels it meets: enumerated ``y`` of shape ``(C, 1)`` and
    ``h`` of shape ``(B, H)`` make ``(C, B, ...)``.
    """
    if (y is None) != (labels is None):
        raise ValueError("this encoder reads labels (q(z|x, y)): pass y" if y is None
                         else "this encoder reads no labels: call it without y")
    if labels is None:
        return net(h)
    return net[1:](net[0](h) + labels(y))


class MLPEncoder(nn.Module):
    """q(z|x) parameters from an MLP: ``D -> hidden... -> 2Z (+ C)``, then a flow's context; q(z|x, y) with
    ``num_classes``."""

    def __init__(self, x_dim: int, z_dim: int, hidden: Sequence[int] = (400,), activation: str = "relu",
                 num_classes: int = 0, context_dim: int = 0):
        super().__init__()
        self.net = mlp([x_dim, *hidden, 2 * z_dim + context_dim], activation)
        self.label_weights = label_table(num_classes, self.net)
        self.context_dim = context_dim

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        return gaussian_parameters(with_labels(self.net, self.label_weights, x, y), self.context_dim)


class MLPClassifier(nn.Module):
    """The logits of q(y|x) from an MLP: ``D -> hidden... -> C`` (Kingma et al. 2014, M2's classifier)."""

    def __init__(self, x_dim: int, num_classes: int, hidden: Sequence[int] = (400,), activation: str = "relu"):
        super().__init__()
        self.net = mlp([x_dim, *hidden, num_classes], activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvClassifier(nn.Module):
    """The logits of q(y|x) from two 3x3 convolutions, each followed by 2x2 max pooling, and a dense head.

    Its shared filters and pooling generalize better than an MLP from few labelled images. Works for images of
    any size and channels (odd sides are pooled up).
    """

    def __init__(self, image_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (128,),
                 activation: str = "relu", channels: tuple[int, int] = (16, 32)):
        super().__init__()
        c, h, w = _check_image_shape(image_shape)
        self.image_shape = (c, h, w)
        self.net = nn.Sequential(
            nn.Conv2d(c, channels[0], 3, padding=1),
            activation_layer(activation),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(channels[0], channels[1], 3, padding=1),
            activation_layer(activation),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Flatten(),
            mlp([channels[1] * _quarter(h) * _quarter(w), *hidden, num_classes], activation),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(-1, *self.image_shape)).reshape(*x.shape[:-1], -1)


class MLPDecoder(nn.Module):
    """Decoder MLP: ``Z -> hidden... -> out_features``."""

    def __init__(self, z_dim: int, out_features: int, hidden: Sequence[int] = (400,), activation: str = "relu"):
        super().__init__()
        self.net = mlp([z_dim, *reversed(hidden), out_features], activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def _check_image_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ValueError(f"the conv nets need images of shape (channels, height, width), got {tuple(image_shape)}; "
                         f"use net='mlp' for other data")
    c, h, w = image_shape
    return c, h, w


def _quarter(side: int) -> int:
    """A side after two stride-2 convolutions of the image padded to a multiple of 4, or two 2x2 poolings."""
    return -(-side // 4)


class ConvEncoder(nn.Module):
    """q(z|x) (or q(z|x, y)) parameters from two stride-2 convolutions and a dense head.

    Works for images of any size and channels: sides that 4 does not divide are first padded with zeros on the
    bottom and right.
    """

    def __init__(self, image_shape: Sequence[int], z_dim: int, hidden: Sequence[int] = (400,),
                 activation: str = "relu", channels: tuple[int, int] = (32, 64), num_classes: int = 0,
                 context_dim: int = 0):
        super().__init__()
        c, h, w = _check_image_shape(image_shape)
        self.image_shape = (c, h, w)
        self.features = nn.Sequential(
            nn.Conv2d(c, channels[0], 4, stride=2, padding=1),
            activation_layer(activation),
            nn.Conv2d(channels[0], channels[1], 4, stride=2, padding=1),
            activation_layer(activation),
            nn.Flatten(),
        )
        self.padding = (0, 4 * _quarter(w) - w, 0, 4 * _quarter(h) - h)  # left, right, top, bottom
        self.head = mlp([channels[1] * _quarter(h) * _quarter(w), *hidden, 2 * z_dim + context_dim], activation)
        self.label_weights = label_table(num_classes, self.head)
        self.context_dim = context_dim

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        features = self.features(F.pad(x.reshape(-1, *self.image_shape), self.padding)).reshape(*x.shape[:-1], -1)
        return gaussian_parameters(with_labels(self.head, self.label_weights, features, y), self.context_dim)


class ConvDecoder(nn.Module):
    """The mirror of :class:`ConvEncoder`: dense layers, then two stride-2 transposed convolutions, cropped to
    the image size and flattened channel-major to ``(..., out_channels * height * width)``."""

    def __init__(self, z_dim: int, image_shape: Sequence[int], out_channels: int, hidden: Sequence[int] = (400,),
                 activation: str = "relu", channels: tuple[int, int] = (32, 64)):
        super().__init__()
        _, h, w = _check_image_shape(image_shape)
        self.height, self.width = h, w
        self.feature_shape = (channels[1], _quarter(h), _quarter(w))
        self.dense = mlp([z_dim, *reversed(hidden), math.prod(self.feature_shape)], activation)
        self.deconv = nn.Sequential(
            activation_layer(activation),
            nn.Unflatten(1, self.feature_shape),
            nn.ConvTranspose2d(channels[1], channels[0], 4, stride=2, padding=1),
            activation_layer(activation),
            nn.ConvTranspose2d(channels[0], out_channels, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.deconv(self.dense(z.reshape(-1, z.shape[-1])))[..., :self.height, :self.width]
        return out.reshape(*z.shape[:-1], -1)
