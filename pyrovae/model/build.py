"""Building a :class:`VAE` from a :class:`ModelConfig`, the settings a run saves in ``config.json``."""

from __future__ import annotations

import torch
from torch import nn

from pyrovae.memory import parameter_bytes
from pyrovae.model.config import ModelConfig
from pyrovae.model.likelihoods import (
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    DiscretizedLogisticLikelihood,
    GaussianLikelihood,
    LaplaceLikelihood,
)
from pyrovae.model.nets import ConvClassifier, ConvDecoder, ConvEncoder, MLPClassifier, MLPDecoder, MLPEncoder
from pyrovae.model.posteriors import DiagonalPosterior, FlowPosterior, context_size
from pyrovae.model.priors import ClassMeansPrior, MixturePrior, StandardNormalPrior, VampPrior
from pyrovae.model.size import refuse_beyond, weight_bytes
from pyrovae.model.tables import TableLikelihood, TableVAE, table_encoder
from pyrovae.model.two_layer import TwoLayerVAE
from pyrovae.model.vae import VAE


def build_likelihood(config: ModelConfig) -> nn.Module:
    """The likelihood module ``config.likelihood`` names."""
    if config.likelihood == "bernoulli":
        return BernoulliLikelihood(grayscale_targets=config.grayscale_targets)
    if config.likelihood == "continuous-bernoulli":
        return ContinuousBernoulliLikelihood()
    if config.likelihood == "discretized-logistic":
        return DiscretizedLogisticLikelihood(config.learn_scale, config.x_dim)
    family = GaussianLikelihood if config.likelihood == "gaussian" else LaplaceLikelihood
    return family(config.likelihood_scale, config.learn_scale, config.x_dim)


def build_prior(config: ModelConfig, encoder: nn.Module) -> nn.Module:
    """The prior module ``config.prior`` names (the VampPrior shares ``encoder``)."""
    if config.prior == "standard":
        return StandardNormalPrior(config.z_dim)
    if config.prior == "class-means":
        config = config.with_label_defaults()  # its start, unless set: as with every label kept
        return ClassMeansPrior(config.z_dim, config.num_classes, config.class_means_init, config.class_scales)
    if config.prior == "mixture":
        return MixturePrior(config.z_dim, config.prior_components)
    return VampPrior(encoder, config.x_dim, config.prior_components)


def build_posterior(config: ModelConfig, z_dim: int) -> nn.Module:
    """The posterior family ``config.guide`` names, over ``z_dim`` latents."""
    if config.guide == "diagonal":
        return DiagonalPosterior()
    return FlowPosterior(config.guide, z_dim, context_size(config.guide, z_dim), config.flow_layers)


def flow_bytes(config: ModelConfig) -> int:
    """The bytes of a flow guide's parameters: Pyro's autoregressive networks cannot be built on ``meta``, so their
    count, a quadratic in the latent size, is extrapolated (Newton's form) from 2, 3, 4 latents, built without
    drawing from the caller's random stream."""
    if config.guide == "diagonal":
        return 0
    latent_sizes = [config.z_dim] if config.latent_layers == 1 else [config.z_dim, config.lower_dim]
    with torch.random.fork_rng(devices=[]):
        at_2, at_3, at_4 = (parameter_bytes(build_posterior(config, size)) for size in (2, 3, 4))
    first, second = at_3 - at_2, at_4 - 2 * at_3 + at_2
    return sum(at_2 + first * (z - 2) + second * (z - 2) * (z - 3) // 2 for z in latent_sizes)


def check_fits(config: ModelConfig, device: torch.device | None = None, copies: int = 1,
               what: str = "for the model's weights") -> None:
    """Refuse, before building it, a model whose parameters (``copies`` of them) cannot fit in the free memory of
    ``device``, by default where models are built now (``meta`` allocates nothing), naming the setting to lower."""
    device = device or torch.get_default_device()
    if device.type != "meta":
        refuse_beyond(config, copies * (weight_bytes(config) + flow_bytes(config)), device, what)


def build_table_vae(config: ModelConfig) -> TableVAE:
    """A fresh :class:`~pyrovae.model.tables.TableVAE` of the table whose column types are ``config.columns``."""
    nets = dict(hidden=config.hidden, activation=config.activation)
    likelihood = TableLikelihood(config.columns, config.likelihood_scale, config.learn_scale)
    encoder = table_encoder(config.columns, config.z_dim, **nets, context_dim=context_size(config.guide, config.z_dim))
    decoder = MLPDecoder(config.z_dim, likelihood.num_params, **nets)
    return TableVAE(encoder, decoder, config.z_dim, likelihood, prior=build_prior(config, encoder), config=config,
                    posterior=build_posterior(config, config.z_dim))


def build_vae(config: ModelConfig) -> VAE:
    """A fresh :class:`VAE` (a :class:`~pyrovae.model.two_layer.TwoLayerVAE` for ``latent_layers=2``, a
    :class:`~pyrovae.model.tables.TableVAE` for a table's ``columns``) as ``config`` names it, its unset few-label
    settings as for every label kept; :class:`~pyrovae.memory.TooBig` if it cannot fit in memory
    (:func:`check_fits`)."""
    check_fits(config)
    if config.columns is not None:
        return build_table_vae(config)
    config = config.with_label_defaults()
    likelihood = build_likelihood(config)
    z_dim = config.lower_dim  # the layer that the encoder and the decoder face
    decoder_in = z_dim + (config.num_classes if config.decoder_conditioning else 0)
    nets = dict(hidden=config.hidden, activation=config.activation)
    encoder_labels = config.num_classes if config.label_guide == "classifier" else 0  # q(z|x, y) beside q(y|x)
    context_dim = context_size(config.guide, z_dim)
    if config.net == "mlp":
        encoder = MLPEncoder(config.x_dim, z_dim, **nets, num_classes=encoder_labels, context_dim=context_dim)
        decoder = MLPDecoder(decoder_in, likelihood.params_per_pixel * config.x_dim, **nets)
    else:
        encoder = ConvEncoder(config.image_shape, z_dim, **nets, num_classes=encoder_labels, context_dim=context_dim)
        out_channels = likelihood.params_per_pixel * config.image_shape[0]
        decoder = ConvDecoder(decoder_in, config.image_shape, out_channels, **nets)
    classifier = None
    if encoder_labels:
        classifier = (MLPClassifier(config.x_dim, config.num_classes, **nets) if config.classifier_net == "mlp"
                      else ConvClassifier(config.image_shape, config.num_classes, activation=config.activation))
    parts = dict(prior=build_prior(config, encoder), likelihood=likelihood, num_classes=config.num_classes,
                 decoder_conditioning=config.decoder_conditioning, classifier=classifier, config=config,
                 posterior=build_posterior(config, z_dim))
    if config.latent_layers == 1:
        return VAE(encoder, decoder, config.z_dim, config.x_dim, **parts)
    upper_encoder = MLPEncoder(z_dim, config.z_dim, **nets, context_dim=context_size(config.guide, config.z_dim))
    upper_decoder = MLPEncoder(config.z_dim, z_dim, tuple(reversed(config.hidden)), config.activation)  # p(z1|z2)
    return TwoLayerVAE(encoder, decoder, config.z_dim, config.x_dim, z1_dim=z_dim, upper_encoder=upper_encoder,
                       upper_decoder=upper_decoder, upper_posterior=build_posterior(config, config.z_dim), **parts)
