"""Two stochastic layers (Burda, Grosse & Salakhutdinov 2015): a VAE whose latent code has a code of its own.

The model is z2 ~ prior(y), z1 ~ N(mu(z2), diag sigma(z2)^2), x ~ likelihood(decoder(z1)); the guide
q(z1|x) q(z2|z1), each of the posterior family. The top layer z2 is the VAE's ``z_dim``, the one the prior, the
latent pictures and ``encode`` see.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from pyrovae.model.posteriors import PARENTS, DiagonalPosterior, location
from pyrovae.model.vae import VAE, data_plate


class TwoLayerVAE(VAE):
    """A :class:`~pyrovae.model.vae.VAE` with two stochastic layers: p(z2|y) p(z1|z2) p(x|z1), q(z1|x) q(z2|z1).

    ``encoder``, ``decoder`` and ``posterior`` work between x and z1 as in :class:`VAE`; ``upper_encoder`` and
    ``upper_posterior`` make q(z2|z1), and ``upper_decoder`` gives ``(loc, scale)`` of p(z1|z2).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, z_dim: int, x_dim: int, *, z1_dim: int,
                 upper_encoder: nn.Module, upper_decoder: nn.Module, upper_posterior: nn.Module | None = None,
                 **parts):
        super().__init__(encoder, decoder, z_dim, x_dim, **parts)
        if self.classifier is not None:
            raise ValueError("two stochastic layers take no classifier q(y|x); use label_guide='none'")
        self.z1_dim = z1_dim
        self.upper_encoder = upper_encoder
        self.upper_decoder = upper_decoder
        self.upper_posterior = upper_posterior if upper_posterior is not None else DiagonalPosterior()

    @property
    def closed_form_kl(self) -> bool:
        """False: KL(q(z1|x) || p(z1|z2)) at a z2 drawn from q(z2|z1) is no KL of the ELBO."""
        return False

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None, *,
              kl_weight: float | torch.Tensor = 1.0, data_size: int | None = None) -> None:
        """p(z2|y) p(z1|z2) p(x|z1), with ``x`` observed; the KL weight scales both latent sites."""
        pyro.module("decoder", self.decoder)
        pyro.module("upper_decoder", self.upper_decoder)
        pyro.module("prior", self.prior)
        pyro.module("likelihood", self.likelihood)
        with data_plate(x, data_size):
            with poutine.scale(scale=kl_weight):
                if self.conditional and y is None:
                    y = pyro.sample("y", self.class_prior(x), infer={"enumerate": "parallel"})
                z2 = pyro.sample("z2", self.prior(y))
                z1 = pyro.sample("z1", dist.Normal(*self.upper_decoder(z2)).to_event(1))
            pyro.sample("x", self.likelihood(self.decoder(self._decoder_input(z1, y))), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None, *,
              kl_weight: float | torch.Tensor = 1.0, data_size: int | None = None) -> None:
        """q(z1|x) q(z2|z1), each a diagonal Gaussian or a flow of one; the z2 site declares that it reads z1."""
        pyro.module("encoder", self.encoder)
        pyro.module("posterior", self.posterior)
        pyro.module("upper_encoder", self.upper_encoder)
        pyro.module("upper_posterior", self.upper_posterior)
        with data_plate(x, data_size), poutine.scale(scale=kl_weight):
            z1 = pyro.sample("z1", self.posterior(*self.encoder(x)))
            pyro.sample("z2", self.upper_posterior(*self.upper_encoder(z1)), infer={PARENTS: ("z1",)})

    def _lower_location(self, x: torch.Tensor) -> torch.Tensor:
        return location(self.posterior(*self.encoder(x)))

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of q(z2|z1) at the location of q(z1|x) (a flow guide: of its base Gaussian)."""
        return self.upper_encoder(self._lower_location(x))[:2]

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E[x|z1] at z1 = E[z1|z2] for top-layer latents ``z``."""
        return super().decode(self.upper_decoder(z)[0], y)

    def _decode_draw(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """E[x|z1] at z1 ~ p(z1|z2): samples of the model, not of its mean E[z1|z2]."""
        return super().decode(dist.Normal(*self.upper_decoder(z)).sample(), y)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E[x|z1] at the location of q(z1|x): the lower layer, which the decoder reads."""
        return super().decode(self._lower_location(x), y)
