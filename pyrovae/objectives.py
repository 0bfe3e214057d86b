"""Training objectives: Pyro's ELBOs with the loss kept on the device.

Pyro's ``Trace_ELBO.differentiable_loss`` reads the ELBO back to the host with
``.item()`` for every site and checks it for NaN on every step, which makes a GPU wait
for the host each step. For the fully reparameterized guides of a VAE the surrogate
loss *is* the negative ELBO, so these subclasses return it as a device tensor and do
nothing else differently: the same traces (``_get_traces``: validation, particles,
vectorization) and the same estimator. ``fit`` checks the loss for NaN once per epoch.
"""

from __future__ import annotations

import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine import Trace
from torch.distributions import kl_divergence


def _sample_sites(trace: Trace):
    return ((name, site) for name, site in trace.nodes.items() if site["type"] == "sample")


class _DeviceResidentLoss:
    """``differentiable_loss`` = -mean over particles of the particle ELBO, as a device tensor."""

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        elbo = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            elbo = elbo + self.particle_elbo(model_trace, guide_trace)
        return -elbo / self.num_particles

    @staticmethod
    def _check_reparameterized(guide_trace: Trace) -> None:
        for name, site in _sample_sites(guide_trace):
            if not site["fn"].has_rsample:
                raise ValueError(
                    f"guide site {name!r} ({type(site['fn']).__name__}) cannot be reparameterized; "
                    f"pyrovae's objectives need reparameterized latents (e.g. Normal). For discrete "
                    f"latents train with pyro.infer.TraceGraph_ELBO or TraceEnum_ELBO instead")


class TraceELBO(_DeviceResidentLoss, Trace_ELBO):
    """Monte Carlo ELBO: log p(x, z) - log q(z|x) at reparameterized z ~ q(z|x)."""

    def particle_elbo(self, model_trace: Trace, guide_trace: Trace) -> torch.Tensor:
        self._check_reparameterized(guide_trace)
        log_p = sum(site["log_prob_sum"] for _, site in _sample_sites(model_trace))
        log_q = sum(site["log_prob_sum"] for _, site in _sample_sites(guide_trace))
        return log_p - log_q


class MeanFieldELBO(_DeviceResidentLoss, TraceMeanField_ELBO):
    """E_q[log p(x|z)] - KL(q(z|x) || p(z)), the KL in closed form where torch knows it (seed 000, eq. 4)."""

    def particle_elbo(self, model_trace: Trace, guide_trace: Trace) -> torch.Tensor:
        self._check_reparameterized(guide_trace)
        elbo = 0.0
        for name, model_site in _sample_sites(model_trace):
            if model_site["is_observed"]:
                elbo = elbo + model_site["log_prob_sum"]
                continue
            guide_site = guide_trace.nodes[name]
            try:
                kl = kl_divergence(guide_site["fn"], model_site["fn"])
            except NotImplementedError:  # e.g. a mixture prior: fall back to the sampled estimate
                elbo = elbo + model_site["log_prob_sum"] - guide_site["log_prob_sum"]
                continue
            kl = scale_and_mask(kl, scale=guide_site["scale"], mask=guide_site["mask"])
            elbo = elbo - kl.expand(guide_site["fn"].batch_shape).sum()
        return elbo
