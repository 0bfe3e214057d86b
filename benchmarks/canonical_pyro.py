"""The canonical Pyro VAE: the loop a Pyro user writes from the tutorial, as the yardstick for pyrovae.

The same nets and math as pyrovae's default model and ``plain_vae.py``: a 784-400-50 MLP
encoder to ``loc`` and ``softplus(raw) + 1e-3``, an MLP decoder to Bernoulli logits, a
N(0, I) prior; trained the textbook way, ``pyro.infer.SVI`` with ``Trace_ELBO`` (or
``TraceMeanField_ELBO``) and ``pyro.optim.Adam``, one ``svi.step(x)`` per batch. Nothing
is tuned: Pyro's defaults stand (validation on, every step's loss returned as a float).

One difference of scale, not of optimum: the data plate here is ``len(x)``, so the loss is
the batch's negative ELBO, while pyrovae's ``fit`` tells its plate the dataset size and its
loss is the whole dataset's estimate (the batch's, times N / B). Adam's steps do not
depend on the gradient's scale (up to its epsilon), so both follow the same path.

Pyro keeps parameters in one global store, by name, and pyrovae's VAE names its nets
"encoder" and "decoder" too; so that both can train in one process, this VAE's parameters
live in a store scope of their own (``own_params``), as Pyro's docs suggest for several
models side by side.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from torch import nn


class Encoder(nn.Module):
    def __init__(self, x_dim: int = 784, hidden: int = 400, z_dim: int = 50):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * z_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = self.net(x).chunk(2, dim=-1)
        return loc, F.softplus(raw) + 1e-3


class Decoder(nn.Module):
    def __init__(self, z_dim: int = 50, hidden: int = 400, x_dim: int = 784):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, x_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)  # Bernoulli logits


class CanonicalVAE(nn.Module):
    """Model p(z) p(x|z) and guide q(z|x) as Pyro functions, and an SVI object to train them."""

    def __init__(self, x_dim: int = 784, hidden: int = 400, z_dim: int = 50, meanfield: bool = False):
        super().__init__()
        self.encoder = Encoder(x_dim, hidden, z_dim)
        self.decoder = Decoder(z_dim, hidden, x_dim)
        self.z_dim = z_dim
        elbo = TraceMeanField_ELBO() if meanfield else Trace_ELBO()
        self.svi = SVI(self.model, self.guide, pyro.optim.Adam({"lr": 1e-3}), elbo)
        self.param_store = {"params": {}, "constraints": {}}  # this VAE's scope of Pyro's param store

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", len(x)):
            zeros = x.new_zeros(len(x), self.z_dim)
            ones = x.new_ones(len(x), self.z_dim)
            z = pyro.sample("z", dist.Normal(zeros, ones).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z), validate_args=False).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", len(x)):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def own_params(self):
        """A context in which Pyro's param store holds this VAE's parameters (and no one else's)."""
        return pyro.get_param_store().scope(self.param_store)

    def epoch(self, batches) -> float:
        """Train on every ``(x, y)`` of ``batches``; the mean negative ELBO per image."""
        total, seen = 0.0, 0
        with self.own_params():
            for x, _ in batches:
                total += self.svi.step(x)
                seen += len(x)
        return total / seen

    def test_neg_elbo(self, x: torch.Tensor, batch_size: int = 1000) -> float:
        """Mean single-sample negative ELBO per image, by ``svi.evaluate_loss``."""
        with self.own_params():
            return sum(self.svi.evaluate_loss(x[i:i + batch_size]) for i in range(0, len(x), batch_size)) / len(x)
