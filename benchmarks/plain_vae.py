"""A plain PyTorch VAE with the same math as pyrovae's default model, for side-by-side timing.

Same architecture (MLP encoder to loc and softplus scale + 1e-3, MLP decoder to Bernoulli
logits), same objective per step: the single-sample Monte Carlo ELBO
log p(x|z) + log p(z) - log q(z|x) (as ``Trace_ELBO``), or with the closed-form KL
(as ``TraceMeanField_ELBO``). Written out by hand: no Pyro anywhere. ``log_weights`` gives the importance weights
log p(x, z_k) - log q(z_k|x) of K samples for a vectorized log-likelihood estimator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2 * math.pi)


class PlainVAE(nn.Module):
    def __init__(self, x_dim: int = 784, hidden: int = 400, z_dim: int = 50):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * z_dim))
        self.decoder = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, x_dim))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = self.encoder(x).chunk(2, dim=-1)
        return loc, F.softplus(raw) + 1e-3

    def loss(self, x: torch.Tensor, closed_form_kl: bool = False) -> torch.Tensor:
        """Negative ELBO summed over the batch (the quantity Pyro's ELBOs return)."""
        loc, scale = self.encode(x)
        eps = torch.randn_like(loc)
        z = loc + scale * eps
        log_px = -F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="sum")
        if closed_form_kl:
            kl = 0.5 * (loc.square() + scale.square() - 2 * scale.log() - 1).sum()
        else:
            log_pz = -0.5 * (z.square() + LOG_2PI).sum()
            log_qz = -0.5 * (eps.square() + LOG_2PI).sum() - scale.log().sum()
            kl = log_qz - log_pz
        return kl - log_px

    def log_weights(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """log p(x, z_k) - log q(z_k|x) for z_k ~ q(z|x), shape (K, B)."""
        loc, scale = self.encode(x)
        eps = torch.randn(num_samples, *loc.shape, device=x.device)
        z = loc + scale * eps
        logits = self.decoder(z)
        log_px = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        log_pz = -0.5 * (z.square() + LOG_2PI).sum(-1)
        log_qz = -0.5 * (eps.square() + LOG_2PI).sum(-1) - scale.log().sum(-1)
        return log_px + log_pz - log_qz
