"""The VAE as a Pyro model and guide: p(z|y) p(x|z) and q(z|x), one site per variable in the data plate.

A conditional model called without labels draws y ~ Categorical(pi), pi uniform, enumerated in parallel, so
``TraceEnum_ELBO`` sums it out exactly (Kingma et al. 2014); with a ``classifier`` the guide is M2's
q(y|x) q(z|x, y). ``model`` and ``guide`` both take ``kl_weight``, which scales the latent sites (the KL term),
and ``data_size``, the dataset's size, which scales a minibatch's log densities by data_size / batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

if TYPE_CHECKING:
    from pyrovae.model.config import ModelConfig
from pyrovae.model.checks import check_example_labels, check_images, check_labels, check_parts
from pyrovae.model.likelihoods import BernoulliLikelihood
from pyrovae.model.posteriors import DiagonalPosterior, location
from pyrovae.model.priors import StandardNormalPrior


def data_plate(x: torch.Tensor, data_size: int | None = None) -> pyro.plate:
    """The plate over a minibatch's examples; told the dataset's size, it scales them by data_size / batch."""
    if data_size is None:
        return pyro.plate("data", len(x))
    return pyro.plate("data", data_size, subsample=torch.arange(len(x), device=x.device))


class VAE(nn.Module):
    """A variational autoencoder built from an encoder, a decoder, a prior and a likelihood.

    The prior defaults to N(0, I), the likelihood to a Bernoulli, the posterior to the encoder's diagonal Gaussian.
    ``decoder_conditioning`` also feeds one-hot ``y`` to the decoder (the classic CVAE); with a ``classifier`` of
    q(y|x), the encoder reads ``y`` too. The inference helpers (:meth:`encode`, ...) return plain tensors.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, z_dim: int, x_dim: int,
                 prior: nn.Module | None = None, likelihood: nn.Module | None = None,
                 num_classes: int | None = None, decoder_conditioning: bool = False,
                 classifier: nn.Module | None = None, config: ModelConfig | None = None,
                 posterior: nn.Module | None = None):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.z_dim = z_dim
        self.x_dim = x_dim
        self.prior = prior if prior is not None else StandardNormalPrior(z_dim)
        self.likelihood = likelihood if likelihood is not None else BernoulliLikelihood()
        self.num_classes = num_classes
        self.decoder_conditioning = decoder_conditioning
        self.classifier = classifier
        self.config = config
        self.posterior = posterior if posterior is not None else DiagonalPosterior()
        check_parts(self.conditional, num_classes, classifier is not None)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def conditional(self) -> bool:
        """Whether the model reads labels ``y`` (through the prior or the decoder)."""
        return getattr(self.prior, "needs_labels", False) or self.decoder_conditioning

    @property
    def closed_form_kl(self) -> bool:
        """Whether ``TraceMeanField_ELBO`` can take KL(q(z|x) || p(z)) in closed form: a Gaussian guide, one layer."""
        return isinstance(self.posterior, DiagonalPosterior)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None, *,
              kl_weight: float | torch.Tensor = 1.0, data_size: int | None = None) -> None:
        """p(z|y) p(x|z), ``x`` observed; a conditional model without ``y`` draws it, enumerated, its KL term weighed
        as z's."""
        pyro.module("decoder", self.decoder)
        pyro.module("prior", self.prior)
        pyro.module("likelihood", self.likelihood)
        with data_plate(x, data_size):
            with poutine.scale(scale=kl_weight):
                if self.conditional and y is None:
                    y = pyro.sample("y", self.class_prior(x), infer={"enumerate": "parallel"})
                z = pyro.sample("z", self.prior(y))
            pyro.sample("x", self.likelihood(self.decoder(self._decoder_input(z, y))), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None, *,
              kl_weight: float | torch.Tensor = 1.0, data_size: int | None = None) -> None:
        """q(z|x) (the posterior of the encoder's outputs); with a classifier, q(y|x) q(z|x, y), y enumerated."""
        pyro.module("encoder", self.encoder)
        pyro.module("posterior", self.posterior)
        if self.classifier is not None:
            pyro.module("classifier", self.classifier)
        with data_plate(x, data_size), poutine.scale(scale=kl_weight):
            if self.classifier is not None and y is None:
                y = pyro.sample("y", dist.Categorical(logits=self.classifier(x)), infer={"enumerate": "parallel"})
            parameters = self.encoder(x) if self.classifier is None else self.encoder(x, y)
            pyro.sample("z", self.posterior(*parameters))

    def class_prior(self, x: torch.Tensor) -> dist.Categorical:
        """pi = p(y), fixed uniform: a learned pi lets every image fall into one class when labels are few."""
        return dist.Categorical(logits=x.new_zeros(self.num_classes))

    def _decoder_input(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """``z``, or ``[z, one_hot(y)]`` with decoder conditioning (``y`` broadcast over leading dims)."""
        if not self.decoder_conditioning:
            return z
        if y is None:
            raise ValueError("this VAE's decoder is conditioned on labels; pass y, one class per example")
        one_hot = F.one_hot(y, self.num_classes).to(z.dtype)
        return torch.cat([z, one_hot.expand(*z.shape[:-1], self.num_classes)], dim=-1)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of q(z|x) (a flow guide: of its base Gaussian); q(z|x, y) reads ``y`` if given, else the
        classifier's most likely class."""
        if self.classifier is None:
            return self.encoder(x)[:2]
        return self.encoder(x, self.classify(x) if y is None else y)[:2]

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's most likely class, argmax_y q(y|x)."""
        if self.classifier is None:
            raise ValueError("this VAE has no classifier q(y|x); build it with label_guide='classifier'")
        return self.classifier(x).argmax(-1)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The likelihood's mean E[x|z]."""
        return self.likelihood.mean(self.decoder(self._decoder_input(z, y)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E[x | z = loc(x)] (a flow guide: loc(x) pushed through the flow; with a classifier and no ``y``, at its
        most likely class)."""
        if y is None and self.classifier is not None:
            y = self.classify(x)
        parameters = self.encoder(x) if self.classifier is None else self.encoder(x, y)
        return self.decode(location(self.posterior(*parameters)), y)

    @torch.no_grad()
    def sample(self, n: int, y: int | torch.Tensor | None = None) -> torch.Tensor:
        """Decode ``n`` draws from the prior; ``y`` (one class, or ``n`` labels) for a conditional model."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n counts the samples and must be a whole number, 0 or more, got {n!r}")
        y = torch.full((n,), y, dtype=torch.long, device=self.device) if isinstance(y, int) else y
        if y is not None:
            self.check_labels(y, "y")
        prior = self.prior(y)
        return self._decode_draw(prior.sample((n,) if prior.batch_shape == () else ()), y)

    def _decode_draw(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """E[x|z] for a prior draw ``z``; a deeper model draws its lower layers first."""
        return self.decode(z, y)

    def check_data(self, x: torch.Tensor, name: str = "data") -> None:
        """Raise ``ValueError`` unless ``x`` can be this model's ``x``."""
        check_images(x, self.x_dim, name)
        self.likelihood.check_data(x, name)

    def check_inputs(self, x: torch.Tensor, y: torch.Tensor | None = None, name: str = "data") -> None:
        """Raise ``ValueError`` unless ``(x, y)`` can be fed to :meth:`model` and :meth:`guide`."""
        self.check_data(x, name)
        check_example_labels(x, y, self.conditional, self.num_classes, name)

    def check_labels(self, y: torch.Tensor, name: str = "labels") -> None:
        """Raise ``ValueError`` unless ``y`` holds integer classes in [0, num_classes) (conditional models)."""
        if self.conditional:
            check_labels(y, self.num_classes, name)
