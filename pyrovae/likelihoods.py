"""Likelihoods p(x|z): map the decoder's raw output to a distribution over ``x`` (event dim 1).

Each likelihood also checks, once and before training, that the data lie in its
support: a cheap up-front check instead of Pyro's per-step argument validation.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn


class BernoulliLikelihood(nn.Module):
    """p(x|z) = prod_d Bernoulli(x_d; sigmoid(logits_d)), the decoder giving the logits.

    An exact likelihood for binary pixels. With ``grayscale_targets=True`` it also
    accepts values in [0, 1] (the binary cross-entropy of most VAE code); the result is
    then not a normalized log-likelihood, so reported nats are not comparable to papers.
    """

    params_per_pixel = 1

    def __init__(self, grayscale_targets: bool = False):
        super().__init__()
        self.grayscale_targets = grayscale_targets

    def forward(self, logits: torch.Tensor) -> dist.Distribution:
        # Support was checked once by check_data; skip the per-step validation.
        return dist.Bernoulli(logits=logits, validate_args=False).to_event(1)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        """E[x|z]: the pixel probabilities, for pictures."""
        return torch.sigmoid(logits)

    def check_data(self, x: torch.Tensor, name: str = "data") -> None:
        """Raise ``ValueError`` if ``x`` lies outside this likelihood's support."""
        low, high = x.min().item(), x.max().item()
        if low < 0 or high > 1:
            raise ValueError(
                f"{name} has values in [{low:g}, {high:g}], but the Bernoulli likelihood needs "
                f"pixels in [0, 1]; scale the images (e.g. divide uint8 pixels by 255)"
            )
        if not self.grayscale_targets and not torch.all((x == 0) | (x == 1)):
            raise ValueError(
                f"{name} has grayscale values, but the Bernoulli likelihood is exact only for "
                f"binary pixels; binarize the data (--binarize static or dynamic) or pass "
                f"grayscale_targets=True to accept an unnormalized likelihood"
            )
