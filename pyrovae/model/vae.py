"""The VAE as a Pyro model and guide.

Generative model p(x, z | y) = p(z | y) p(x | z), one site per variable inside the data plate::

    z ~ prior(y)                      # N(0, I) by default; N(mu_y, I) for the conditional VAE
    x ~ likelihood(decoder(z[, y]))   # Bernoulli(logits) by default

and the amortized guide q(z|x) = N(loc(x), diag(scale(x)^2)), or that Gaussian pushed through a
normalizing flow (a ``posterior`` of :mod:`pyrovae.model.posteriors`). ``Trace_ELBO`` turns the
pair into the reparameterized ELBO estimate E_q[log p(x|z)] - KL(q(z|x) || p(z|y))
(Kingma & Welling 2014).

A conditional model called without labels draws them too, y ~ Categorical(pi) with pi
uniform, as a site enumerated in parallel: ``TraceEnum_ELBO`` sums it out exactly, so
unlabelled images train the model of p(x) = sum_y pi_y p(x|y) (Kingma et al. 2014). Its
guide either leaves y to the model (p(y|z) is then exact), or, with a ``classifier``, is
M2's q(y|x) q(z|x, y), the classifier's y enumerated in the guide.

Training knobs are arguments of ``model`` and ``guide`` alike, as Pyro's deep Markov model
example passes its ``annealing_factor``:

- ``kl_weight`` (a positive float or a 0-dim tensor, 1 by default) wraps the latent site in
  ``poutine.scale``, so it multiplies exactly the KL term (the beta of Canziani & LeCun's
  lecture notes, warm-up, or the balance of Verduzco 2023);
- ``data_size`` (``None`` by default), the size of the dataset a minibatch is drawn from,
  makes the data plate scale the minibatch's log densities by data_size / batch, so the loss
  estimates the whole dataset's ELBO, the same for one process and for many.

:func:`~pyrovae.fit` passes both; evaluation uses the defaults. The module holds parameters only.
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

    Args:
        encoder: maps ``(..., D)`` images to ``(loc, scale)`` of q(z|x) (and the context of a flow ``posterior``).
        decoder: maps ``(..., Z)`` latents (``(..., Z + C)`` with ``decoder_conditioning``) to the likelihood's input.
        z_dim: latent size Z.
        x_dim: flattened image size D.
        prior: returns p(z) (or p(z|y)) as a distribution with event dim 1; defaults to N(0, I).
        likelihood: maps decoder output to p(x|z); defaults to Bernoulli with logits.
        num_classes: C, the number of label values, for a conditional model.
        decoder_conditioning: also feed one-hot ``y`` to the decoder (the classic CVAE).
        classifier: maps images to the logits of q(y|x); with one, the guide of an unlabelled image is
            q(y|x) q(z|x, y), and the encoder must read ``y`` too.
        config: the :class:`~pyrovae.model.config.ModelConfig` this VAE was built from, if any.
        posterior: maps the encoder's outputs to q(z|x); defaults to the diagonal Gaussian (``DiagonalPosterior``).

    :meth:`model` and :meth:`guide` take the same keyword arguments, ``kl_weight`` and ``data_size`` (see the module).
    The inference helpers (:meth:`encode`, :meth:`decode`, ...) return plain tensors, ready for ``.numpy()``.
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
        """Where the parameters live (and where inputs must be)."""
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
        """p(z|y) p(x|z), with ``x`` observed: shape ``(B, D)``; labels ``y``: ``(B,)``. A conditional model without
        ``y`` draws it, y ~ Categorical(pi), enumerated; the KL weight then weighs y's KL term with z's."""
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
        """q(z|x) = N(loc(x), diag(scale(x)^2)) (or a flow of it); with a classifier, q(y|x) q(z|x, y), y
        enumerated if not given."""
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
        """The posterior parameters ``(loc, scale)``, each ``(B, Z)`` (of a flow guide: of its base Gaussian); an
        encoder of q(z|x, y) reads ``y`` if given, else the classifier's most likely class."""
        if self.classifier is None:
            return self.encoder(x)[:2]
        return self.encoder(x, self.classify(x) if y is None else y)[:2]

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's most likely class, argmax_y q(y|x), ``(B,)`` (a VAE with a classifier)."""
        if self.classifier is None:
            raise ValueError("this VAE has no classifier q(y|x); build it with label_guide='classifier'")
        return self.classifier(x).argmax(-1)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The likelihood's mean E[x|z] (pixel probabilities for Bernoulli), ``(..., D)``."""
        return self.likelihood.mean(self.decoder(self._decoder_input(z, y)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decode the posterior mean of each image: E[x | z = loc(x)] (a flow guide: loc(x) pushed through the flow;
        with a classifier and no ``y``, at its most likely class)."""
        if y is None and self.classifier is not None:
            y = self.classify(x)
        parameters = self.encoder(x) if self.classifier is None else self.encoder(x, y)
        return self.decode(location(self.posterior(*parameters)), y)

    @torch.no_grad()
    def sample(self, n: int, y: int | torch.Tensor | None = None) -> torch.Tensor:
        """Decode ``n`` draws from the prior; ``y`` (one class, or ``n`` labels) for a conditional model."""
        y = torch.full((n,), y, dtype=torch.long, device=self.device) if isinstance(y, int) else y
        if y is not None:
            self.check_labels(y, "y")
        prior = self.prior(y)
        z = prior.sample((n,) if prior.batch_shape == () else ())
        return self.decode(z, y)

    def check_data(self, x: torch.Tensor, name: str = "data") -> None:
        """Raise ``ValueError`` naming the problem if ``x`` cannot be this model's ``x``."""
        check_images(x, self.x_dim, name)
        self.likelihood.check_data(x, name)

    def check_inputs(self, x: torch.Tensor, y: torch.Tensor | None = None, name: str = "data") -> None:
        """Raise ``ValueError`` naming the problem unless ``(x, y)`` can be fed to :meth:`model` and :meth:`guide`."""
        self.check_data(x, name)
        check_example_labels(x, y, self.conditional, self.num_classes, name)

    def check_labels(self, y: torch.Tensor, name: str = "labels") -> None:
        """Raise ``ValueError`` unless ``y`` holds integer classes in [0, num_classes) (conditional models)."""
        if self.conditional:
            check_labels(y, self.num_classes, name)
