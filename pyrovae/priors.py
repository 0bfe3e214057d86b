"""Priors p(z) (or p(z|y)): small modules that return a distribution over ``z`` with event dim 1.

A prior is called as ``prior(y)`` inside the model's data plate and returns a Pyro
distribution whose batch shape broadcasts against the plate (``()`` or ``(B,)``) and
whose event shape is ``(z_dim,)``. Any ``nn.Module`` with that contract plugs in.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I): the prior of the original VAE (seed 000, seed 002)."""

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))

    def forward(self, y: torch.Tensor | None = None) -> dist.Distribution:
        return dist.Normal(self.loc, self.scale).to_event(1)
