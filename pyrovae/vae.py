"""The VAE as a Pyro model and guide.

Generative model p(x, z) = p(z) p(x|z), one site per variable inside the data plate::

    z ~ prior(y)                      # N(0, I) by default
    x ~ likelihood(decoder(z))        # Bernoulli(logits) by default

and the amortized guide q(z|x) = N(loc(x), diag(scale(x)^2)). ``Trace_ELBO`` turns the
pair into the reparameterized ELBO estimate E_q[log p(x|z)] - KL(q(z|x) || p(z)).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.likelihoods import BernoulliLikelihood
from pyrovae.nets import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from pyrovae.priors import StandardNormalPrior


class VAE(nn.Module):
    """A variational autoencoder built from an encoder, a decoder, a prior and a likelihood.

    Args:
        encoder: maps ``(..., D)`` images to ``(loc, scale)`` of q(z|x).
        decoder: maps ``(..., Z)`` latents to the likelihood's raw parameters.
        z_dim: latent size Z.
        x_dim: flattened image size D.
        prior: returns p(z) (or p(z|y)) as a distribution with event dim 1;
            defaults to N(0, I).
        likelihood: maps decoder output to p(x|z); defaults to Bernoulli with logits.
        config: the :class:`ModelConfig` this VAE was built from, if any (saved with runs).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, z_dim: int, x_dim: int,
                 prior: nn.Module | None = None, likelihood: nn.Module | None = None,
                 config: ModelConfig | None = None):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.z_dim = z_dim
        self.x_dim = x_dim
        self.prior = prior if prior is not None else StandardNormalPrior(z_dim)
        self.likelihood = likelihood if likelihood is not None else BernoulliLikelihood()
        self.config = config

    @property
    def device(self) -> torch.device:
        """Where the parameters live (and where inputs must be)."""
        return next(self.parameters()).device

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """p(z|y) p(x|z), with ``x`` observed: shape ``(B, D)``."""
        pyro.module("decoder", self.decoder)
        pyro.module("prior", self.prior)
        pyro.module("likelihood", self.likelihood)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(y))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """q(z|x) = N(loc(x), diag(scale(x)^2))."""
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior parameters ``(loc, scale)``, each ``(B, Z)``."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean E[x|z] (pixel probabilities for Bernoulli), ``(..., D)``."""
        return self.likelihood.mean(self.decoder(z))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean of each image: E[x | z = loc(x)]."""
        return self.decode(self.encode(x)[0])

    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decode ``n`` draws from the prior (given labels ``y`` for a conditional prior)."""
        prior = self.prior(y)
        z = prior.sample((n,) if prior.batch_shape == () else ())
        return self.decode(z)

    def check_data(self, x: torch.Tensor, name: str = "data") -> None:
        """Raise ``ValueError`` naming the problem if ``x`` cannot be this model's ``x``."""
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {type(x).__name__} "
                             f"{getattr(x, 'dtype', '')}; convert with torch.as_tensor(x, dtype=torch.float32)")
        if x.ndim != 2 or x.shape[1] != self.x_dim:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)}, but this model expects (N, {self.x_dim}) "
                f"flattened images; reshape with x.reshape(len(x), -1) or build the model "
                f"for this image size"
            )
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or infinite values; clean or drop those examples")
        self.likelihood.check_data(x, name)


@dataclasses.dataclass
class ModelConfig:
    """Every hyperparameter needed to rebuild a :class:`VAE` (saved as ``config.json``)."""

    image_shape: Sequence[int] = (1, 28, 28)
    z_dim: int = 10
    net: str = "mlp"
    hidden: Sequence[int] = (400,)
    activation: str = "relu"
    grayscale_targets: bool = False

    def __post_init__(self) -> None:
        self.image_shape = tuple(self.image_shape)
        self.hidden = tuple(self.hidden)
        if self.z_dim < 1:
            raise ValueError(f"z_dim must be at least 1, got {self.z_dim}")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden sizes must be positive, got {list(self.hidden)}")
        if self.net not in NETS:
            raise ValueError(f"unknown net {self.net!r}; choose one of {', '.join(NETS)}")

    @property
    def x_dim(self) -> int:
        return int(torch.Size(self.image_shape).numel())


NETS = ("mlp", "conv")


def build_vae(config: ModelConfig) -> VAE:
    """A fresh :class:`VAE` with the nets, prior and likelihood that ``config`` names."""
    likelihood = BernoulliLikelihood(grayscale_targets=config.grayscale_targets)
    out_features = likelihood.params_per_pixel * config.x_dim
    nets = dict(hidden=config.hidden, activation=config.activation)
    if config.net == "mlp":
        encoder = MLPEncoder(config.x_dim, config.z_dim, **nets)
        decoder = MLPDecoder(config.z_dim, out_features, **nets)
    else:
        encoder = ConvEncoder(config.image_shape, config.z_dim, **nets)
        out_channels = likelihood.params_per_pixel * config.image_shape[0]
        decoder = ConvDecoder(config.z_dim, config.image_shape, out_channels, **nets)
    return VAE(encoder, decoder, config.z_dim, config.x_dim, likelihood=likelihood, config=config)
