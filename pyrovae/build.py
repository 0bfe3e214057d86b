"""Building a :class:`VAE` from a :class:`ModelConfig`, the settings a run saves in ``config.json``.

Each choice is a name (``net``, ``prior``, ``likelihood``) looked up here; the decoder's
output width follows from the likelihood and its input width from the conditioning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from pyrovae.likelihoods import (
    LEARN_SCALE,
    LIKELIHOODS,
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    GaussianLikelihood,
    LaplaceLikelihood,
)
from pyrovae.nets import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from pyrovae.priors import PRIORS, ClassMeansPrior, MixturePrior, StandardNormalPrior, VampPrior
from pyrovae.vae import VAE

NETS = ("mlp", "conv")
LABEL_PRIORS = ("class-means",)
"""Built-in priors that read the labels, p(z|y)."""


@dataclasses.dataclass
class ModelConfig:
    """Every hyperparameter needed to rebuild a :class:`VAE` (saved as ``config.json``).

    A model is conditional when its prior reads labels (``class-means``) or
    ``decoder_conditioning`` feeds them to the decoder; it then needs ``num_classes``.
    ``likelihood_scale`` is the fixed (or initial, with ``learn_scale``) scale of the
    Gaussian and Laplace likelihoods; ``prior_components`` is K of ``mixture`` and ``vamp``.
    """

    image_shape: Sequence[int] = (1, 28, 28)
    z_dim: int = 10
    net: str = "mlp"
    hidden: Sequence[int] = (400,)
    activation: str = "relu"
    prior: str = "standard"
    prior_components: int = 10
    likelihood: str = "bernoulli"
    likelihood_scale: float = 0.1
    learn_scale: str | None = None
    grayscale_targets: bool = False
    num_classes: int | None = None
    decoder_conditioning: bool = False

    def __post_init__(self) -> None:
        self.image_shape = tuple(self.image_shape)
        self.hidden = tuple(self.hidden)
        if len(self.image_shape) != 3 or any(side < 1 for side in self.image_shape):
            raise ValueError(f"image_shape must be three positive sizes (channels, height, width), "
                             f"got {list(self.image_shape)}")
        if self.z_dim < 1:
            raise ValueError(f"z_dim must be at least 1, got {self.z_dim}")
        if self.prior_components < 1:
            raise ValueError(f"prior_components (K of the mixture and vamp priors) must be at least 1, "
                             f"got {self.prior_components}")
        if not self.likelihood_scale > 0 or self.likelihood_scale == float("inf"):
            raise ValueError(f"likelihood_scale must be a positive number, got {self.likelihood_scale}")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden sizes must be positive, got {list(self.hidden)}")
        for field, value, choices in (("net", self.net, NETS), ("prior", self.prior, PRIORS),
                                      ("likelihood", self.likelihood, LIKELIHOODS),
                                      ("learn_scale", self.learn_scale, (None, *LEARN_SCALE))):
            if value not in choices:
                raise ValueError(f"unknown {field} {value!r}; choose one of "
                                 f"{', '.join(str(c) for c in choices if c is not None)}")
        if self.learn_scale is not None and self.likelihood not in ("gaussian", "laplace"):
            raise ValueError(f"a learned scale needs the gaussian or laplace likelihood, not {self.likelihood}")
        if self.conditional and (self.num_classes is None or self.num_classes < 2):
            raise ValueError(f"a conditional model needs num_classes >= 2 (the number of labels), "
                             f"got {self.num_classes}")

    @property
    def x_dim(self) -> int:
        return int(torch.Size(self.image_shape).numel())

    @property
    def conditional(self) -> bool:
        return self.prior in LABEL_PRIORS or self.decoder_conditioning


def build_likelihood(config: ModelConfig) -> nn.Module:
    """The likelihood module ``config.likelihood`` names."""
    if config.likelihood == "bernoulli":
        return BernoulliLikelihood(grayscale_targets=config.grayscale_targets)
    if config.likelihood == "continuous-bernoulli":
        return ContinuousBernoulliLikelihood()
    family = GaussianLikelihood if config.likelihood == "gaussian" else LaplaceLikelihood
    return family(config.likelihood_scale, config.learn_scale, config.x_dim)


def build_prior(config: ModelConfig, encoder: nn.Module) -> nn.Module:
    """The prior module ``config.prior`` names (the VampPrior shares ``encoder``)."""
    if config.prior == "standard":
        return StandardNormalPrior(config.z_dim)
    if config.prior == "class-means":
        return ClassMeansPrior(config.z_dim, config.num_classes)
    if config.prior == "mixture":
        return MixturePrior(config.z_dim, config.prior_components)
    return VampPrior(encoder, config.x_dim, config.prior_components)


def build_vae(config: ModelConfig) -> VAE:
    """A fresh :class:`VAE` with the nets, prior and likelihood that ``config`` names."""
    likelihood = build_likelihood(config)
    decoder_in = config.z_dim + (config.num_classes if config.decoder_conditioning else 0)
    nets = dict(hidden=config.hidden, activation=config.activation)
    if config.net == "mlp":
        encoder = MLPEncoder(config.x_dim, config.z_dim, **nets)
        decoder = MLPDecoder(decoder_in, likelihood.params_per_pixel * config.x_dim, **nets)
    else:
        encoder = ConvEncoder(config.image_shape, config.z_dim, **nets)
        out_channels = likelihood.params_per_pixel * config.image_shape[0]
        decoder = ConvDecoder(decoder_in, config.image_shape, out_channels, **nets)
    return VAE(encoder, decoder, config.z_dim, config.x_dim, prior=build_prior(config, encoder),
               likelihood=likelihood, num_classes=config.num_classes,
               decoder_conditioning=config.decoder_conditioning, config=config)
