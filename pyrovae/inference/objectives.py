"""Training objectives: Pyro's ELBOs with the loss kept on the device, and its two halves.

Pyro's ``Trace_ELBO.differentiable_loss`` reads the ELBO back to the host with ``.item()`` on every step,
making a GPU wait. For the reparameterized guides of a VAE the surrogate loss *is* the negative ELBO, so
these subclasses return it as a device tensor, with the same traces and estimator; ``fit`` checks for NaN
once per epoch. :meth:`loss_and_parts` also returns the unweighted reconstruction and KL terms, for logging
and for the KL balance. The IWAE bound has three gradient estimators; see :class:`IWAEBound`.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Iterable
from typing import NamedTuple

import pyro.distributions as dist
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine import Trace
from torch.distributions import kl_divergence

from pyrovae.inference.importance import sum_over_plates
from pyrovae.model.posteriors import PARENTS
from pyrovae.settings import SettingError

ESTIMATORS = ("standard", "stl", "dreg")
"""The gradient estimators of :class:`IWAEBound`."""
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
    """``differentiable_loss`` as a device tensor: the loss of :meth:`loss_and_parts`."""

    def loss_and_parts(self, model, guide, *args, **kwargs) -> ELBOParts:
        particles = []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            _check_reparameterized(guide_trace)
            particles.append(self.particle_elbo(model_trace, guide_trace))
        # the mean over particles (one vectorized trace holds them all), without dividing by one
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


def _base_gaussian(site: dict) -> tuple[dist.Normal, list]:
    """A guide site's distribution as a Gaussian and the transforms that push it to z."""
    fn, transforms = site["fn"], []
    if isinstance(fn, dist.TransformedDistribution):
        fn, transforms = fn.base_dist, fn.transforms
    while isinstance(fn, dist.Independent):
        fn = fn.base_dist
    if not isinstance(fn, dist.Normal):
        raise ValueError(f"the stl and dreg estimators take the path derivative through Gaussian draws; guide site "
                         f"{site['name']!r} is {type(site['fn']).__name__}: use estimator='standard'")
    return fn, transforms


def _base_draw(site: dict) -> torch.Tensor:
    """The Gaussian draw u that a guide site pushed through its transforms to its value.

    The transforms' inverses answer from the cache of the forward pass: no autoregressive inversion is computed.
    """
    return functools.reduce(lambda z, transform: transform.inv(z), reversed(_base_gaussian(site)[1]), site["value"])


def _path_log_prob(site: dict) -> torch.Tensor:
    """log q(z) of a guide site's draw, through which only the path derivative reaches the Gaussian's parameters.

    loc and scale are detached; the transforms' log-determinants keep the ordinary gradient.
    """
    gaussian, transforms = _base_gaussian(site)
    detached = dist.Normal(gaussian.loc.detach(), gaussian.scale.detach()).to_event(len(site["fn"].event_shape))
    return dist.TransformedDistribution(detached, transforms).log_prob(site["value"])


def _scale_path_gradient(site: dict, normalized: torch.Tensor, kl_weight: float | torch.Tensor) -> None:
    """Multiply the gradient that will reach a guide site's Gaussian draw by 1 - s + s w~_k, s the site's KL weight.

    That turns w~_k d log w_k / d u_k into DReG's (w~_k - s w~_k (1 - w~_k)) d log w_k / d u_k (Tucker et al. 2019).
    """
    draw = _base_draw(site)
    if draw.requires_grad:
        event_dims = len(site["fn"].event_shape)
        factor = (1 - kl_weight + kl_weight * normalized).reshape(draw.shape[:-event_dims] + (1,) * event_dims)
        draw.register_hook(lambda grad: grad * factor)


class IWAEBound(_DeviceResidentLoss, RenyiELBO):
    """The importance-weighted bound (Burda et al. 2015), Renyi's alpha = 0, per example:

        sum_b [logsumexp_k log w_kb - log K],   log w_kb = log p(x_b, z_kb) - log q(z_kb | x_b),

    with the K particles vectorized and the weights summed over every plate inside ``data_plate``; K = 1 is
    the ELBO. A ``poutine.scale`` inside the data plate (the KL weight) weighs its sites inside the weights;
    the data plate's own scale multiplies the bound. ``recon`` and ``kl`` are particle averages, for logging.

    The gradient is sum_k w~_k grad log w_k, w~_k the normalized weights; ``estimator`` picks its estimate:

    - ``standard``: autograd through the reparameterized draws; the encoder's signal-to-noise ratio falls
      like 1/sqrt(K) (Rainforth et al. 2018).
    - ``stl``: log q with the guide's Gaussian parameters detached, dropping the score term (Roeder et al.
      2017); biased for K > 1 (Tucker et al. 2019).
    - ``dreg``: the score term rewritten by reparameterization, the encoder's weights w~_k becoming w~_k^2
      (Tucker et al. 2019); unbiased for every K. Implemented as ``stl`` with each draw's gradient scaled.

    The path derivative is taken at each guide site's Gaussian draw u = loc + scale * eps; a flow's transforms
    keep the standard gradient, so none is inverted. A site whose Gaussian reads another latent declares it,
    ``infer={PARENTS: ("z1",)}``, and keeps the standard gradient too, lest what flows on to z1 be scaled twice.
    Estimators other than ``standard`` need Gaussian guide sites.
    """

    def __init__(self, num_particles: int = 1, vectorize_particles: bool = True, data_plate: str = "data",
                 estimator: str = "standard", **kwargs):
        super().__init__(alpha=0.0, num_particles=num_particles, vectorize_particles=True, **kwargs)
        if estimator not in ESTIMATORS:
            raise SettingError("estimator", f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
        self.data_plate = data_plate
        self.estimator = estimator

    def loss_and_parts(self, model, guide, *args, **kwargs) -> ELBOParts:
        (model_trace, guide_trace), = self._get_traces(model, guide, args, kwargs)
        _check_reparameterized(guide_trace)
        data_scale = next(site["scale"] for _, site in _sample_sites(model_trace) if site["is_observed"])

        def weighted(site: dict, log_prob: torch.Tensor) -> torch.Tensor:
            keep = (self.data_plate, VECTORIZED_PARTICLES)
            return sum_over_plates(scale_and_mask(log_prob, site["scale"] / data_scale, site["mask"]), site, keep)

        latents = dict(_sample_sites(guide_trace))
        paths = set() if self.estimator == "standard" else {
            name for name, site in latents.items() if not site["infer"].get(PARENTS)}
        log_q = _total(weighted(site, _path_log_prob(site) if name in paths else site["unscaled_log_prob"])
                       for name, site in latents.items())
        log_p = _total(weighted(site, site["unscaled_log_prob"]) for _, site in _sample_sites(model_trace))
        log_weights = (log_p - log_q).reshape(self.num_particles, -1)  # (K, B)
        if self.estimator == "dreg":
            normalized = log_weights.detach().softmax(0)
            for name in paths:
                _scale_path_gradient(latents[name], normalized, latents[name]["scale"] / data_scale)
        bound = data_scale * (log_weights.logsumexp(0) - math.log(self.num_particles)).sum()
        log_likelihood, kl = _sampled_parts(model_trace, guide_trace)
        return ELBOParts(-bound, -log_likelihood / self.num_particles, kl / self.num_particles)
