"""Two stochastic layers (Burda et al. 2015): the importance-sampled log-likelihood by hand, and the parts around it."""

import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine

from pyrovae import ModelConfig, build_vae
from pyrovae.data.datasets import Split
from pyrovae.inference.evaluate import log_likelihood
from pyrovae.inference.objectives import IWAEBound, TraceELBO
from pyrovae.model.posteriors import PARENTS
from pyrovae.model.two_layer import TwoLayerVAE
from pyrovae.report import plots


def gaussian_log_density(value, loc, scale):
    """sum_i log N(value_i; loc_i, scale_i^2), written out."""
    return (-0.5 * ((value - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def test_the_two_layer_log_likelihood_matches_a_hand_computation_for_fixed_noise():
    """log p(x) ~ logsumexp_k [log p(z2) + log p(z1|z2) + log p(x|z1) - log q(z1|x) - log q(z2|z1)] - log K, at the
    draws the estimator made (recorded from its guide)."""
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=2, hidden=(8,), latent_layers=2))
    assert isinstance(vae, TwoLayerVAE) and vae.z1_dim == 4
    x = torch.bernoulli(torch.full((6, 16), 0.4))
    draws = {}

    def recording_guide(x):
        with poutine.trace() as tracer:
            vae.guide(x)
        draws.update({name: tracer.trace.nodes[name]["value"] for name in ("z1", "z2")})

    estimate = log_likelihood(vae.model, recording_guide, x, num_samples=50)
    z1, z2 = draws["z1"], draws["z2"]
    assert z1.shape == (50, 6, 4) and z2.shape == (50, 6, 2)
    with torch.no_grad():
        logits = vae.decoder(z1)
        log_p = (gaussian_log_density(z2, torch.zeros(2), torch.ones(2))
                 + gaussian_log_density(z1, *vae.upper_decoder(z2))
                 + (x * logits - F.softplus(logits)).sum(-1))
        log_q = gaussian_log_density(z1, *vae.encoder(x)) + gaussian_log_density(z2, *vae.upper_encoder(z1))
    by_hand = (log_p - log_q).logsumexp(0) - math.log(50)
    torch.testing.assert_close(estimate, by_hand)


@pytest.mark.parametrize("guide", ["diagonal", "iaf"])
def test_every_objective_trains_two_layers(guide):
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=2, hidden=(8,), latent_layers=2, guide=guide))
    x = torch.bernoulli(torch.full((5, 16), 0.4))
    objectives = [TraceELBO(max_plate_nesting=1),
                  *(IWAEBound(num_particles=3, max_plate_nesting=1, estimator=e) for e in ("standard", "stl", "dreg"))]
    for objective in objectives:
        vae.zero_grad()
        parts = objective.loss_and_parts(vae.model, vae.guide, x, kl_weight=0.5)
        parts.loss.backward()
        assert torch.isfinite(parts.loss) and parts.kl > 0
        assert all(p.grad is not None for p in [*vae.encoder.parameters(), *vae.upper_encoder.parameters(),
                                                *vae.upper_decoder.parameters(), *vae.decoder.parameters()])


@pytest.mark.parametrize("guide", ["diagonal", "iaf"])
def test_dreg_treats_q_z1_given_x_and_leaves_q_z2_given_z1_to_the_standard_gradient(guide):
    """q(z2|z1) declares that it reads z1, so DReG leaves it, like the model and the flow, to the standard gradient
    draw for draw; only the lower encoder, through z1's Gaussian draw, gets DReG's gradient."""
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=2, hidden=(8,), latent_layers=2, guide=guide))
    x = torch.bernoulli(torch.full((5, 16), 0.4))
    sites = poutine.trace(vae.guide).get_trace(x).nodes
    assert sites["z2"]["infer"] == {PARENTS: ("z1",)} and PARENTS not in sites["z1"]["infer"]

    def gradients(estimator):
        vae.zero_grad()
        pyro.set_rng_seed(1)
        bound = IWAEBound(num_particles=4, max_plate_nesting=1, estimator=estimator)
        bound.loss_and_parts(vae.model, vae.guide, x, kl_weight=0.7).loss.backward()
        return {name: parameter.grad.clone() for name, parameter in vae.named_parameters()}

    standard, dreg = gradients("standard"), gradients("dreg")
    for name, gradient in standard.items():
        if name.startswith("encoder."):
            assert not torch.allclose(dreg[name], gradient), name
        else:
            torch.testing.assert_close(dreg[name], gradient, msg=name)

def test_the_conditional_prior_sits_on_the_top_layer():
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=2, hidden=(8,), latent_layers=2, prior="class-means",
                                num_classes=3))
    x, y = torch.bernoulli(torch.full((5, 16), 0.4)), torch.tensor([0, 1, 2, 0, 1])
    assert torch.isfinite(log_likelihood(vae, x, y, num_samples=20)).all()
    unlabelled = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(vae.model, vae.guide, x)
    assert torch.isfinite(unlabelled)  # y summed out exactly above the two layers
    assert vae.sample(4, y=2).shape == (4, 16)
    assert vae.encode(x)[0].shape == (5, 2) and vae.reconstruct(x).shape == (5, 16)


def test_samples_draw_z1_from_p_z1_given_z2_rather_than_decoding_its_mean():
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=2, hidden=(8,), latent_layers=2))
    torch.manual_seed(1)
    drawn = vae.sample(500)
    torch.manual_seed(1)
    means = vae.decode(vae.prior(None).sample((500,)))  # the same z2, decoded at E[z1|z2]
    assert drawn.std(0).mean() > 2 * means.std(0).mean()


def test_the_manifold_and_interpolation_of_two_layers_say_that_they_decode_the_mean_of_p_z1_given_z2():
    vae = build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=2, hidden=(8,), latent_layers=2))
    assert "mean of p(z1|z2), z2 over" in plots.manifold_tiles(vae, n=3).title
    test = Split.from_arrays(torch.bernoulli(torch.full((4, 16), 0.5)), torch.tensor([0, 1, 0, 1]))
    assert "of z2 (mean of p(z1|z2))" in plots.interpolation_figure(vae, test, (1, 4, 4)).axes[0].get_title()
