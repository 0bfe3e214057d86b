"""Priors p(z) (or p(z|y)): modules that return a distribution over ``z`` with event dim 1.

A prior is called as ``prior(y)`` inside the model's data plate; its batch shape broadcasts against the plate,
and SVI trains its parameters with the nets. Any ``nn.Module`` that does so plugs in; set ``needs_labels = True``
on one that reads ``y``.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyrovae.model.nets import inverse_softplus

PRIORS = ("standard", "class-means", "mixture", "vamp")
"""Names of the built-in priors, as ``--prior`` takes them."""


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I): the prior of the original VAE (Kingma & Welling 2014)."""

    needs_labels = False

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_load_state_dict_pre_hook(drop_unit_scale)

    def forward(self, y: torch.Tensor | None = None) -> dist.Distribution:
        return dist.Normal(self.loc, 1.0).to_event(1)


def drop_unit_scale(module: nn.Module, state_dict: dict[str, torch.Tensor], prefix: str, *_) -> None:
    """Drop the unit ``scale`` that checkpoints from pyrovae 0.1.0's development hold, to load them strictly."""
    state_dict.pop(prefix + "scale", None)


class ClassMeansPrior(nn.Module):
    """p(z|y) = N(mu_y, I), one learned mean per class (Su Jianlin 2018, the conditional VAE of eq. 8).

    The means start from N(0, init_scale^2 I): apart with labels (3), or the classes separate only slowly;
    close without them (0.3), or the mean nearest the encoder's first outputs takes every image.
    ``learn_scales`` learns a diagonal scale per class too, N(mu_y, diag(s_y^2)), as VaDE does (Jiang et al. 2017),
    for clusters that differ in spread.
    """

    needs_labels = True

    def __init__(self, z_dim: int, num_classes: int, init_scale: float = 3.0, learn_scales: bool = False):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"the class-means prior needs at least 2 classes, got {num_classes}")
        self.z_dim = z_dim
        self.num_classes = num_classes
        self.means = nn.Parameter(init_scale * torch.randn(num_classes, z_dim))
        self.raw_scales = (nn.Parameter(torch.full((num_classes, z_dim), inverse_softplus(1.0))) if learn_scales
                           else None)

    def forward(self, y: torch.Tensor | None = None) -> dist.Distribution:
        if y is None:
            raise ValueError("the class-means prior p(z|y) needs labels y; pass y to model, guide and "
                             "sample (labels for training, or the class to generate for sample)")
        scale = 1.0 if self.raw_scales is None else F.softplus(self.raw_scales[y])
        return dist.Normal(self.means[y], scale).to_event(1)


class MixturePrior(nn.Module):
    """p(z) = sum_k pi_k N(z; m_k, diag(s_k^2)): a learned mixture of K diagonal Gaussians."""

    needs_labels = False

    def __init__(self, z_dim: int, num_components: int):
        super().__init__()
        if num_components < 1:
            raise ValueError(f"a mixture prior needs at least one component, got {num_components}")
        self.z_dim = z_dim
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.locs = nn.Parameter(torch.randn(num_components, z_dim))
        self.raw_scales = nn.Parameter(torch.full((num_components, z_dim), inverse_softplus(1.0)))

    def forward(self, y: torch.Tensor | None = None) -> dist.Distribution:
        components = dist.Normal(self.locs, F.softplus(self.raw_scales)).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)


class VampPrior(nn.Module):
    """The VampPrior (Tomczak & Welling 2018): p(z) = 1/K sum_k q(z | u_k), the encoder's (the guide's own)
    posteriors at K learned pseudo-inputs u_k, kept in [0, 1] by a sigmoid."""

    needs_labels = False

    def __init__(self, encoder: nn.Module, x_dim: int, num_components: int,
                 pseudo_inputs: torch.Tensor | None = None):
        super().__init__()
        if num_components < 1:
            raise ValueError(f"a VampPrior needs at least one pseudo-input, got {num_components}")
        self.encoder = encoder
        if pseudo_inputs is None:
            pseudo_inputs = 0.5 + 0.05 * torch.randn(num_components, x_dim)
        if pseudo_inputs.shape != (num_components, x_dim):
            raise ValueError(f"pseudo_inputs must have shape ({num_components}, {x_dim}), "
                             f"got {tuple(pseudo_inputs.shape)}")
        self.raw_pseudo_inputs = nn.Parameter(torch.logit(pseudo_inputs.clamp(1e-3, 1 - 1e-3)))

    @property
    def pseudo_inputs(self) -> torch.Tensor:
        """The K pseudo-inputs u_k, ``(K, D)`` in [0, 1]."""
        return torch.sigmoid(self.raw_pseudo_inputs)

    def forward(self, y: torch.Tensor | None = None) -> dist.Distribution:
        loc, scale = self.encoder(self.pseudo_inputs)
        uniform = torch.zeros(len(loc), device=loc.device)
        return dist.MixtureSameFamily(dist.Categorical(logits=uniform), dist.Normal(loc, scale).to_event(1))
