"""Posterior families q(z|x): the encoder's diagonal Gaussian, or that Gaussian pushed through a normalizing flow.

A flow draws u ~ N(loc, diag scale^2), then z = f_L(... f_1(u; h) ...; h), each f_l one of Pyro's autoregressive
transforms conditioned on the encoder's context h(x): affine (``iaf``, Kingma et al. 2016) or a rational-quadratic
spline (``spline``, Durkan et al. 2019). Then

    log q(z|x) = log N(u; loc, scale) - sum_l log |det df_l / du_(l-1)|,

each determinant the product of a triangular Jacobian's diagonal. Pyro's transforms cache their last input, so a
draw's density needs no inverse. The flows start at the identity, so a flow guide starts as the diagonal one.
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
"""The ``infer`` key that names the latents a guide site's distribution is computed from, as ``("z1",)`` for
q(z2|z1): the path-derivative estimators leave such a site to the standard gradient."""
SPLINE_BINS = 8
"""Segments of each spline, on [-3, 3] (Pyro's defaults; the identity outside)."""


Flow = tuple[dist.ConditionalTransformModule, ConditionalAutoRegressiveNN]
"""A conditional autoregressive transform and its network."""


def conditional_affine(z_dim: int, context_dim: int) -> Flow:
    """Pyro's conditional inverse autoregressive flow, with the network of its helper (a hidden layer of 10 x z_dim)."""
    network = ConditionalAutoRegressiveNN(z_dim, context_dim, [10 * z_dim])
    return ConditionalAffineAutoregressive(network), network


def conditional_quadratic_spline(z_dim: int, context_dim: int) -> Flow:
    """Pyro's conditional autoregressive rational-quadratic spline, its network sized for the three parameter sets of
    a quadratic spline (widths, heights, derivatives; Pyro's helper sizes it for the linear spline's four)."""
    network = ConditionalAutoRegressiveNN(z_dim, context_dim, [10 * z_dim, 10 * z_dim],
                                          param_dims=[SPLINE_BINS, SPLINE_BINS, SPLINE_BINS - 1])
    return ConditionalSplineAutoregressive(z_dim, network, count_bins=SPLINE_BINS, order="quadratic"), network


FLOWS = {"iaf": conditional_affine, "spline": conditional_quadratic_spline}
"""The builders of each flow's transforms, ``make(z_dim, context_dim)``."""


def output_layer(network: ConditionalAutoRegressiveNN) -> MaskedLinear:
    """The layer that emits a network's outputs: its last masked linear layer (it has no skip layer)."""
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
    """q(z|x): N(loc, diag scale^2) pushed through ``layers`` conditional autoregressive transforms of context h(x),
    each ordering the latents by its own random permutation."""

    def __init__(self, kind: Literal["iaf", "spline"], z_dim: int, context_dim: int, layers: int = 2):
        super().__init__()
        with _real_tensors():
            flows = [FLOWS[kind](z_dim, context_dim) for _ in range(layers)]
        self.transforms = nn.ModuleList(transform for transform, _ in flows)
        # A plain tuple: the layers are registered under ``transforms``.
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
    """The CPU while models are built on the meta device: Pyro's autoregressive networks read their layout back with
    ``.item()``, which a ``meta`` tensor cannot answer."""
    return torch.device("cpu") if torch.get_default_device().type == "meta" else contextlib.nullcontext()
