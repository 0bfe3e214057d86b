"""Training objectives: Pyro's ELBOs with the loss kept on the device, and its two halves.

Pyro's ``Trace_ELBO.differentiable_loss`` reads the ELBO back to the host with
``.item()`` for every site and checks it for NaN on every step, which makes a GPU wait
for the host each step. For the fully reparameterized guides of a VAE the surrogate
loss *is* the negative ELBO, so these subclasses return it as a device tensor and do
nothing else differently: the same traces (``_get_traces``: validation, particles,
vectorization) and the same estimator. ``fit`` checks the loss for NaN once per epoch.

:meth:`loss_and_parts` also returns the reconstruction term -E_q[log p(x|z)] and the
KL term, unweighted, for logging and for the KL balance of Verduzco (2023). The loss itself
takes Pyro's scaled log densities, so a ``poutine.scale`` on the latent site (the KL
weight) weighs exactly the KL term.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Iterable
from typing import NamedTuple

import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine import Trace
from torch.distributions import kl_divergence

from pyrovae.importance import sum_over_plates

VECTORIZED_PARTICLES = "num_particles_vectorized"
"""The name of the plate over particles that Pyro's ELBOs add with ``vectorize_particles=True``."""


def _sample_sites(trace: Trace):
    return ((name, site) for name, site in trace.nodes.items() if site["type"] == "sample")


class ELBOParts(NamedTuple):
    """A minibatch's objective and its halves, each summed over the batch and averaged over particles."""

    loss: torch.Tensor
    """What is minimized: recon + w * kl, with the KL weight w in force (differentiable)."""
    recon: torch.Tensor
    """-E_q[log p(x|z)], the reconstruction term (detached)."""
    kl: torch.Tensor
    """The KL(q(z|x) || p(z)) estimate, unweighted (detached)."""


def _check_reparameterized(guide_trace: Trace) -> None:
    for name, site in _sample_sites(guide_trace):
        if not site["fn"].has_rsample:
            raise ValueError(
                f"guide site {name!r} ({type(site['fn']).__name__}) cannot be reparameterized; "
                f"pyrovae's objectives need reparameterized latents (e.g. Normal). For discrete "
                f"latents train with pyro.infer.TraceGraph_ELBO or TraceEnum_ELBO instead")


@torch.no_grad()
def _sampled_parts(model_trace: Trace, guide_trace: Trace) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(x|z), log q(z|x) - log p(z)) at the sampled z, from unweighted densities, summed (for logging)."""
    log_likelihood = kl = 0.0
    for name, site in _sample_sites(model_trace):
        if site["is_observed"]:
            log_likelihood = log_likelihood + site["unscaled_log_prob"].sum()
        else:
            kl = kl + guide_trace.nodes[name]["unscaled_log_prob"].sum() - site["unscaled_log_prob"].sum()
    return log_likelihood, kl


def _total(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """The sum of one or more tensors, without the ``0 +`` that Python's ``sum`` starts from."""
    return functools.reduce(operator.add, terms)


class _DeviceResidentLoss:
    """``differentiable_loss`` = -mean over particles of the particle ELBO, as a device tensor."""

    def loss_and_parts(self, model, guide, *args, **kwargs) -> ELBOParts:
        particles = []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            _check_reparameterized(guide_trace)
            particles.append(self.particle_elbo(model_trace, guide_trace))
        # Sums over the particles (one vectorized trace holds them all), then the mean; no
        # autograd node for a division by one.
        elbo, log_likelihood, kl = (_total(terms) for terms in zip(*particles))
        if self.num_particles > 1:
            elbo, log_likelihood, kl = (part / self.num_particles for part in (elbo, log_likelihood, kl))
        return ELBOParts(-elbo, -log_likelihood, kl)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        return self.loss_and_parts(model, guide, *args, **kwargs).loss


class TraceELBO(_DeviceResidentLoss, Trace_ELBO):
    """Monte Carlo ELBO: log p(x, z) - log q(z|x) at reparameterized z ~ q(z|x)."""

    def particle_elbo(self, model_trace: Trace, guide_trace: Trace) -> tuple[torch.Tensor, ...]:
        """(weighted ELBO, log p(x|z), KL estimate log q(z|x) - log p(z)), batch sums; the last two detached."""
        log_p = _total(site["log_prob_sum"] for _, site in _sample_sites(model_trace))
        log_q = _total(site["log_prob_sum"] for _, site in _sample_sites(guide_trace))
        return (log_p - log_q, *_sampled_parts(model_trace, guide_trace))


class MeanFieldELBO(_DeviceResidentLoss, TraceMeanField_ELBO):
    """E_q[log p(x|z)] - KL(q(z|x) || p(z)), the KL in closed form where torch knows it (Su Jianlin 2018, eq. 4)."""

    def particle_elbo(self, model_trace: Trace, guide_trace: Trace) -> tuple[torch.Tensor, ...]:
        """(weighted ELBO, log p(x|z), KL), the KL in closed form where torch has one; the last two detached."""
        elbo = log_likelihood = kl = 0.0
        for name, model_site in _sample_sites(model_trace):
            if model_site["is_observed"]:
                elbo = elbo + model_site["log_prob_sum"]
                log_likelihood = log_likelihood + model_site["unscaled_log_prob"].detach().sum()
                continue
            guide_site = guide_trace.nodes[name]
            try:
                site_kl = kl_divergence(guide_site["fn"], model_site["fn"]).expand(guide_site["fn"].batch_shape)
            except NotImplementedError:  # e.g. a mixture prior: fall back to the sampled estimate
                site_kl = guide_site["unscaled_log_prob"] - model_site["unscaled_log_prob"]
            elbo = elbo - scale_and_mask(site_kl, scale=guide_site["scale"], mask=guide_site["mask"]).sum()
            kl = kl + site_kl.detach().sum()
        return elbo, log_likelihood, kl


class IWAEBound(RenyiELBO):
    """The importance-weighted bound (Burda et al. 2015), Renyi's alpha = 0, per example:

        sum_b [logsumexp_k log w_kb - log K],   log w_kb = log p(x_b, z_kb) - log q(z_kb | x_b),

    with the K particles vectorized (a plate left of every plate of the model). The
    logsumexp runs over the particle dim of each example's own weights, never over the
    batch sum; the weights are summed over every plate inside ``data_plate`` (see
    :mod:`pyrovae.importance`), so any model whose examples' sites lie in that plate works.
    K = 1 is the ELBO. A ``poutine.scale`` inside the data plate (the KL weight) weighs its
    sites' log densities inside the weights; the data plate's own scale (the dataset size
    over the batch size, when the model is told it) multiplies the bound. Returns the loss on
    the device, like the ELBOs above; ``recon`` and ``kl`` are their particle averages (the
    ELBO's halves), for logging.
    """

    def __init__(self, num_particles: int = 1, vectorize_particles: bool = True, data_plate: str = "data",
                 **kwargs):
        super().__init__(alpha=0.0, num_particles=num_particles, vectorize_particles=True, **kwargs)
        self.data_plate = data_plate

    def loss_and_parts(self, model, guide, *args, **kwargs) -> ELBOParts:
        (model_trace, guide_trace), = self._get_traces(model, guide, args, kwargs)
        _check_reparameterized(guide_trace)
        data_scale = next(site["scale"] for _, site in _sample_sites(model_trace) if site["is_observed"])

        def weighted(trace: Trace) -> torch.Tensor:
            keep = (self.data_plate, VECTORIZED_PARTICLES)
            return _total(sum_over_plates(scale_and_mask(site["unscaled_log_prob"], site["scale"] / data_scale,
                                                         site["mask"]), site, keep)
                          for _, site in _sample_sites(trace))

        log_weights = (weighted(model_trace) - weighted(guide_trace)).reshape(self.num_particles, -1)  # (K, B)
        bound = data_scale * (log_weights.logsumexp(0) - math.log(self.num_particles)).sum()
        log_likelihood, kl = _sampled_parts(model_trace, guide_trace)
        n = self.num_particles
        return ELBOParts(-bound, -log_likelihood / n, kl / n)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        return self.loss_and_parts(model, guide, *args, **kwargs).loss
