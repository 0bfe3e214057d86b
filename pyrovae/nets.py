"""Encoder and decoder networks: plain ``nn.Module``s that know nothing of Pyro.

An encoder maps flattened images ``x`` of shape ``(..., D)`` to the parameters
``(loc, scale)`` of the Gaussian posterior q(z|x) (or q(z|x, y), built with
``num_classes``); a decoder maps latents ``z`` of shape ``(..., Z)`` to
``(..., out_features)`` raw outputs (logits for a Bernoulli likelihood); a classifier
maps images to the logits of q(y|x). Leading batch dimensions are kept, so the same nets
serve a minibatch ``(B, D)`` and a stack of importance samples ``(K, B, Z)``.
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
        raise ValueError(
            f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}"
        ) from None


def mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Linear layers of the given sizes with an activation between them (none at the end)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i > 0:
            layers.append(activation_layer(activation))
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


def gaussian_parameters(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``(..., 2Z)`` into ``loc`` and a positive ``scale = softplus(.) + MIN_SCALE``."""
    loc, raw_scale = h.chunk(2, dim=-1)
    return loc, F.softplus(raw_scale) + MIN_SCALE


def inverse_softplus(value: float) -> float:
    """The raw parameter whose softplus is ``value`` (to initialize a positive quantity)."""
    return math.log(math.expm1(value))


def label_table(num_classes: int, net: nn.Sequential) -> nn.Embedding | None:
    """For ``net`` read on ``[h, one_hot(y)]``: the first layer's one-hot columns, one row per class (none if 0)."""
    return nn.Embedding(num_classes, net[0].out_features) if num_classes else None


def with_labels(net: nn.Sequential, labels: nn.Embedding | None, h: torch.Tensor,
                y: torch.Tensor | None) -> torch.Tensor:
    """``net`` on ``[h, one_hot(y)]``, as W [h, one_hot(y)] = W_h h + W_y[y]; on ``h`` alone without a table.

    ``h`` passes through the first layer once, however many labels it is paired with:
    ``y`` of shape ``(C, 1)`` (every class, as enumeration gives them) and ``h`` of shape
    ``(B, H)`` make ``(C, B, ...)``.
    """
    if (y is None) != (labels is None):
        raise ValueError("this encoder reads labels (q(z|x, y)): pass y" if y is None
                         else "this encoder reads no labels: call it without y")
    if labels is None:
        return net(h)
    return net[1:](net[0](h) + labels(y))


class MLPEncoder(nn.Module):
    """q(z|x) parameters from an MLP: ``D -> hidden... -> 2Z``; q(z|x, y) with ``num_classes``."""

    def __init__(self, x_dim: int, z_dim: int, hidden: Sequence[int] = (400,), activation: str = "relu",
                 num_classes: int = 0):
        super().__init__()
        self.net = mlp([x_dim, *hidden, 2 * z_dim], activation)
        self.label_weights = label_table(num_classes, self.net)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return gaussian_parameters(with_labels(self.net, self.label_weights, x, y))


class MLPClassifier(nn.Module):
    """The logits of q(y|x) from an MLP: ``D -> hidden... -> C`` (Kingma et al. 2014, M2's classifier)."""

    def __init__(self, x_dim: int, num_classes: int, hidden: Sequence[int] = (400,), activation: str = "relu"):
        super().__init__()
        self.net = mlp([x_dim, *hidden, num_classes], activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPDecoder(nn.Module):
    """Decoder MLP: ``Z -> hidden... -> out_features``."""

    def __init__(self, z_dim: int, out_features: int, hidden: Sequence[int] = (400,), activation: str = "relu"):
        super().__init__()
        self.net = mlp([z_dim, *reversed(hidden), out_features], activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def _check_image_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(image_shape) != 3 or image_shape[1] % 4 or image_shape[2] % 4:
        raise ValueError(
            f"the conv nets need images of shape (channels, height, width) with height and "
            f"width divisible by 4 (e.g. 8x8 or 28x28), got {tuple(image_shape)}; use net='mlp'"
        )
    c, h, w = image_shape
    return c, h, w


class ConvEncoder(nn.Module):
    """q(z|x) (or q(z|x, y)) parameters from two stride-2 convolutions and a dense head.

    Works for any image whose height and width are divisible by 4: a 28x28 image
    becomes 64 feature maps of 7x7, an 8x8 image 64 maps of 2x2.
    """

    def __init__(self, image_shape: Sequence[int], z_dim: int, hidden: Sequence[int] = (400,),
                 activation: str = "relu", channels: tuple[int, int] = (32, 64), num_classes: int = 0):
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
        self.head = mlp([channels[1] * (h // 4) * (w // 4), *hidden, 2 * z_dim], activation)
        self.label_weights = label_table(num_classes, self.head)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x.reshape(-1, *self.image_shape)).reshape(*x.shape[:-1], -1)
        return gaussian_parameters(with_labels(self.head, self.label_weights, features, y))


class ConvDecoder(nn.Module):
    """The mirror of :class:`ConvEncoder`: dense layers, then two stride-2 transposed convolutions.

    Emits ``out_channels`` maps of the image size, flattened channel-major to
    ``(..., out_channels * height * width)``.
    """

    def __init__(self, z_dim: int, image_shape: Sequence[int], out_channels: int,
                 hidden: Sequence[int] = (400,), activation: str = "relu",
                 channels: tuple[int, int] = (32, 64)):
        super().__init__()
        _, h, w = _check_image_shape(image_shape)
        self.feature_shape = (channels[1], h // 4, w // 4)
        self.dense = mlp([z_dim, *reversed(hidden), channels[1] * (h // 4) * (w // 4)], activation)
        self.deconv = nn.Sequential(
            activation_layer(activation),
            nn.Unflatten(1, self.feature_shape),
            nn.ConvTranspose2d(channels[1], channels[0], 4, stride=2, padding=1),
            activation_layer(activation),
            nn.ConvTranspose2d(channels[0], out_channels, 4, stride=2, padding=1),
            nn.Flatten(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch_shape = z.shape[:-1]
        out = self.deconv(self.dense(z.reshape(-1, z.shape[-1])))
        return out.reshape(*batch_shape, -1)
