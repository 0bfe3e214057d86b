"""The two Gaussians of every training step, with log-densities written for that step.

Both are ``pyro.distributions.Normal``s (KL, sampling, expansion and plates work as for any
Normal); only ``log_prob`` is shorter, because a step evaluates it at known places:

* :class:`UnitNormal`, N(loc, I), the standard and class-means priors: the unit scale
  drops out, log p(z) = -1/2 sum_i [(z_i - loc_i)^2 + log 2 pi].
* :class:`ReparameterizedNormal`, the guide's N(loc, diag(scale^2)): at its own draw
  z = loc + scale * eps, log q(z) = -1/2 sum_i [eps_i^2 + log 2 pi] - sum_i log scale_i.
  That is the same function of (loc, scale), so it has the same value and gradient as the
  general formula. The general one, with z held fixed, also differentiates through z,
  and its terms in loc cancel exactly.

Each saves a handful of elementwise operations and autograd nodes per step, about 0.1 ms
on a CPU at batch 128, which matters when the nets themselves take 3 ms.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch.distributions import Normal as TorchNormal
from torch.distributions import register_kl

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class UnitNormal(dist.Normal):
    """N(loc, 1) in every coordinate: a Normal whose scale is fixed at one."""

    def __init__(self, loc: torch.Tensor, validate_args: bool | None = None):
        super().__init__(loc, torch.ones((), dtype=loc.dtype, device=loc.device).expand_as(loc), validate_args)

    def expand(self, batch_shape, _instance=None) -> UnitNormal:
        return super().expand(batch_shape, _instance if _instance is not None else UnitNormal.__new__(UnitNormal))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return -0.5 * (value - self.loc).square() - HALF_LOG_2PI


class ReparameterizedNormal(dist.Normal):
    """N(loc, scale^2) that remembers the noise of its last ``rsample`` and scores that draw from it."""

    _draw: tuple[torch.Tensor, torch.Tensor] | None = None

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        eps = torch.randn(self._extended_shape(sample_shape), dtype=self.loc.dtype, device=self.loc.device)
        z = self.loc + eps * self.scale
        self._draw = (z, eps)
        return z

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._draw is None or value is not self._draw[0]:
            return super().log_prob(value)
        eps = self._draw[1]
        return -0.5 * eps.square() - HALF_LOG_2PI - self.scale.log()


@register_kl(TorchNormal, UnitNormal)
def _kl_normal_unit_normal(q: TorchNormal, p: UnitNormal) -> torch.Tensor:
    """KL(N(m, s^2) || N(mu, 1)) = 1/2 [(m - mu)^2 + s^2 - 1] - log s, per coordinate."""
    return 0.5 * ((q.loc - p.loc).square() + q.scale.square() - 1) - q.scale.log()

