"""Evaluation from the Pyro model and guide themselves: per-example log weights and the ELBO.

The log importance weight of a draw z ~ q(z|x) is log p(x, z) - log q(z|x); its
expectation under q is the ELBO. Both traces are taken under a ``particles`` plate
left of the data plate, so one pass gives weights of shape (K, B) for any prior,
likelihood or user-written part, with no special cases.
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro import poutine

from pyrovae.vae import VAE


def _log_prob_per_example(trace: poutine.Trace) -> torch.Tensor:
    """Sum the log densities of all sample sites, keeping the (particles, data) dims."""
    total = 0.0
    for site in trace.nodes.values():
        if site["type"] == "sample":
            total = total + site["fn"].log_prob(site["value"])
    return total


def log_importance_weights(vae: VAE, x: torch.Tensor, y: torch.Tensor | None = None,
                           num_particles: int = 1) -> torch.Tensor:
    """log p(x, z_k) - log q(z_k|x) for z_k ~ q(z|x), shape ``(num_particles, B)``.

    Densities are unscaled: a KL weight set with ``poutine.scale`` for training does not
    change what is evaluated here.
    """
    with pyro.plate("particles", num_particles, dim=-2):
        guide_trace = poutine.trace(vae.guide).get_trace(x, y)
        model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x, y)
    weights = _log_prob_per_example(model_trace) - _log_prob_per_example(guide_trace)
    return weights.expand(num_particles, x.shape[0])


@torch.no_grad()
def negative_elbo(vae: VAE, x: torch.Tensor, y: torch.Tensor | None = None,
                  batch_size: int = 1000, num_particles: int = 1) -> torch.Tensor:
    """Per-example negative ELBO in nats, shape ``(N,)``: -mean_k [log p(x, z_k) - log q(z_k|x)].

    ``x`` and ``y`` are moved to the VAE's device batch by batch.
    """
    was_training = vae.training
    vae.eval()
    try:
        parts = [
            -log_importance_weights(vae, x[i:i + batch_size].to(vae.device),
                                    None if y is None else y[i:i + batch_size].to(vae.device),
                                    num_particles).mean(0)
            for i in range(0, len(x), batch_size)
        ]
    finally:
        vae.train(was_training)
    return torch.cat(parts)


def mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    """The mean of per-example values and its standard error, std / sqrt(N)."""
    n = len(values)
    mean = values.mean().item()
    stderr = values.std().item() / math.sqrt(n) if n > 1 else float("nan")
    return mean, stderr
