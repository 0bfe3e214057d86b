"""Posterior families q(z|x): the encoder's diagonal Gaussian, or that Gaussian pushed through a normalizing flow.

An encoder emits the parameters ``(loc, scale)`` of a diagonal Gaussian and, for a flow, a
context vector h(x) from the same last layer (Kingma et al. 2016, "Improved Variational
Inference with Inverse Autoregressive Flow"). A posterior module turns them into q(z|x):

- :class:`DiagonalPosterior`: q(z|x) = N(loc, diag scale^2).
- :class:`FlowPosterior`: u ~ N(loc, diag scale^2), then z = f_L(... f_1(u; h) ...; h), each
  f_l an autoregressive transform of Pyro's conditioned on h: an affine one, z_i = mu_i(u_<i, h)
  + sigma_i(u_<i, h) u_i, the inverse autoregressive flow of Kingma et al. (2016) (``iaf``), or a
  rational-quadratic spline, the neural spline flow of Durkan et al. (2019) (``spline``; Pyro's
  conditional spline is autoregressive, not a coupling). By the change of variables,

      log q(z|x) = log N(u; loc, scale) - sum_l log |det df_l / du_(l-1)|,

  and each determinant is the product of the transform's diagonal, since its Jacobian is
  triangular. A draw takes one pass through each transform; Pyro's transforms remember their
  last input, so the density of that draw is read without inverting them (an autoregressive
  inverse takes one pass per latent dimension).

The flows start at the identity (their networks' last layer is zero), so a flow guide starts
out as the diagonal guide and grows away from it as it trains.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Literal

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive, ConditionalSplineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN, MaskedLinear
from torch import nn

GUIDES = ("diagonal", "iaf", "spline")
"""The posterior families, as ``guide=`` names them."""
PARENTS = "parents"
"""The ``infer`` key of a guide site that names the reparameterized latents its distribution is computed from, as
``infer={PARENTS: ("z1",)}`` for q(z2|z1): the path-derivative estimators leave such a site to the standard gradient."""
SPLINE_BINS = 8
"""Segments of each spline, on [-3, 3] (Pyro's defaults; the identity outside)."""


Flow = tuple[dist.ConditionalTransformModule, ConditionalAutoRegressiveNN]
"""A conditional autoregressive transform and the network that computes its parameters."""


def conditional_affine(z_dim: int, context_dim: int) -> Flow:
    """Pyro's conditional affine autoregressive transform (the inverse autoregressive flow of Kingma et al. 2016),
    with the network Pyro's helper ``conditional_affine_autoregressive`` gives it (one hidden layer of 10 x z_dim)."""
    network = ConditionalAutoRegressiveNN(z_dim, context_dim, [10 * z_dim])
    return ConditionalAffineAutoregressive(network), network


def conditional_quadratic_spline(z_dim: int, context_dim: int) -> Flow:
    """Pyro's conditional autoregressive rational-quadratic spline (Durkan et al. 2019), with hidden layers of
    10 x z_dim and the three parameter sets a quadratic spline reads: bin widths, heights and knot derivatives.
    (Pyro's helper ``conditional_spline_autoregressive`` sizes its network for the linear spline's four.)"""
    network = ConditionalAutoRegressiveNN(z_dim, context_dim, [10 * z_dim, 10 * z_dim],
                                          param_dims=[SPLINE_BINS, SPLINE_BINS, SPLINE_BINS - 1])
    return ConditionalSplineAutoregressive(z_dim, network, count_bins=SPLINE_BINS, order="quadratic"), network


FLOWS = {"iaf": conditional_affine, "spline": conditional_quadratic_spline}
"""What builds one conditional transform of each flow and its network, ``make(z_dim, context_dim)``."""


def output_layer(network: ConditionalAutoRegressiveNN) -> MaskedLinear:
    """The layer that emits a network's outputs: the last masked linear layer it registers (it has no skip layer)."""
    *_, last = (module for module in network.modules() if isinstance(module, MaskedLinear))
    return last


def context_size(guide: str, z_dim: int) -> int:
    """The length of the context h(x) an encoder emits for ``guide`` over ``z_dim`` latents (none for the diagonal)."""
    return 0 if guide == "diagonal" else z_dim


class DiagonalPosterior(nn.Module):
    """q(z|x) = N(loc, diag scale^2), the Gaussian of the VAE's encoder (Kingma & Welling 2014)."""

    def forward(self, loc: torch.Tensor, scale: torch.Tensor) -> dist.Distribution:
        return dist.Normal(loc, scale).to_event(1)


class FlowPosterior(nn.Module):
    """q(z|x): N(loc, diag scale^2) pushed through ``layers`` conditional autoregressive transforms of context h(x).

    ``kind`` is ``iaf`` or ``spline`` (see the module's docstring). Each transform's
    autoregressive network orders the latents by its own random permutation, so the layers
    do not all condition on the same neighbours.
    """

    def __init__(self, kind: Literal["iaf", "spline"], z_dim: int, context_dim: int, layers: int = 2):
        super().__init__()
        with _real_tensors():
            flows = [FLOWS[kind](z_dim, context_dim) for _ in range(layers)]
        self.transforms = nn.ModuleList(transform for transform, _ in flows)
        # A plain tuple: the layers are registered once, under ``transforms``.
        self.output_layers: tuple[MaskedLinear, ...] = tuple(output_layer(network) for _, network in flows)
        for layer in self.output_layers:  # start at the identity (exactly so for iaf)
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, loc: torch.Tensor, scale: torch.Tensor, context: torch.Tensor) -> dist.Distribution:
        base = dist.Normal(loc, scale).to_event(1)
        return dist.ConditionalTransformedDistribution(base, list(self.transforms)).condition(context)


def location(q: dist.Distribution) -> torch.Tensor:
    """A representative z of q: the base Gaussian's mean, pushed through the flow's transforms if q has any."""
    if isinstance(q, dist.TransformedDistribution):
        return functools.reduce(lambda z, transform: transform(z), q.transforms, q.base_dist.mean)
    return q.mean


def _real_tensors() -> contextlib.AbstractContextManager:
    """Pyro's autoregressive networks read their own layout back with ``.item()``, which a ``meta`` tensor cannot
    answer: while models are built on the meta device (to count their parameters), build those on the CPU."""
    return torch.device("cpu") if torch.get_default_device().type == "meta" else contextlib.nullcontext()
