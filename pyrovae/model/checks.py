"""A VAE's checks: whether tensors can be its images ``x`` and labels ``y``, and whether its parts fit together.

Each raises a ``ValueError`` that names the problem and its fix before any model sees the data, where a wrong
shape would fail deep in the nets and NaNs or bad labels would train quietly to nonsense.
"""

from __future__ import annotations

from typing import Any

import torch


def check_examples(x: Any, name: str = "x") -> None:
    """Raise ``ValueError`` unless ``x`` is a tensor of one or more examples, one a row."""
    if not torch.is_tensor(x):
        raise ValueError(f"{name} must be a torch tensor, got {type(x).__name__}; convert it with torch.as_tensor(x)")
    if x.dim() == 0 or not len(x):
        raise ValueError(f"{name} holds no examples (shape {tuple(x.shape)}); pass at least one")


def check_images(x: torch.Tensor, x_dim: int, name: str = "data") -> None:
    """Raise ``ValueError`` unless ``x`` is an ``(N, x_dim)`` tensor of finite floats, ``N >= 1``."""
    if torch.is_tensor(x) and x.dtype == torch.uint8:
        raise ValueError(f"{name} are uint8 pixels; scale them to [0, 1] floats first, with "
                         f"pyrovae.data.datasets.as_floats(x) (x / 255)")
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {type(x).__name__} "
                         f"{getattr(x, 'dtype', '')}; convert with torch.as_tensor(x, dtype=torch.float32)")
    if x.ndim != 2 or x.shape[1] != x_dim:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, but this model expects (N, {x_dim}) flattened images; "
                         f"reshape with x.reshape(len(x), -1) or build the model for this image size")
    check_examples(x, name)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values; clean or drop those examples")


def check_example_labels(x: torch.Tensor, y: torch.Tensor | None, conditional: bool, num_classes: int | None,
                         name: str = "data") -> None:
    """Raise ``ValueError`` unless ``y`` holds one class per example of ``x`` (a model that reads no labels takes
    ``None`` or any ``(N,)`` tensor)."""
    if conditional and y is None:
        raise ValueError(f"this VAE is conditional: {name} needs labels y, one class per example")
    if y is None:
        return
    if not torch.is_tensor(y) or y.shape != (len(x),):
        raise ValueError(f"{name}: {len(x)} examples need labels of shape ({len(x)},), got "
                         f"{tuple(getattr(y, 'shape', ())) or type(y).__name__}")
    if conditional:
        check_labels(y, num_classes, f"{name} labels")


def check_labels(y: torch.Tensor, num_classes: int, name: str = "labels") -> None:
    """Raise ``ValueError`` unless ``y`` is an integer tensor of classes in [0, num_classes)."""
    if not torch.is_tensor(y) or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor of class labels, got {getattr(y, 'dtype', type(y))}")
    if y.numel() and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name} must lie in [0, {num_classes}), got values from {y.min().item()} "
                         f"to {y.max().item()}; this model was built for {num_classes} classes: choose 0 to "
                         f"{num_classes - 1}")


def check_parts(conditional: bool, num_classes: int | None, has_classifier: bool) -> None:
    """Raise ``ValueError`` unless a VAE's parts fit together: labels need a class count, a classifier labels."""
    if conditional and not num_classes:
        raise ValueError("a conditional VAE (label-reading prior or decoder conditioning) needs num_classes")
    if has_classifier and not conditional:
        raise ValueError("a classifier q(y|x) needs a conditional VAE: a prior that reads the labels, or "
                         "decoder conditioning")
