"""Flow posteriors: exact checks through the public estimators, against the diagonal guide and closed forms."""

import hashlib

import pyro
import pyro.distributions as dist
import pytest
import torch
from test_log_likelihood import SIGMA, D, Z, exact_log_marginal, factor_analysis_vae, sample_data
from torch import nn

from pyrovae import VAE, ModelConfig, build_vae
from pyrovae.inference.evaluate import log_likelihood, negative_elbo
from pyrovae.inference.objectives import IWAEBound
from pyrovae.model.likelihoods import GaussianLikelihood
from pyrovae.model.nets import MLPEncoder
from pyrovae.model.posteriors import FlowPosterior, location


def test_a_flow_of_identities_gives_the_diagonal_guides_numbers_exactly():
    """A fresh flow is the identity (its networks' last layer is zero): its guide is the diagonal guide, whose
    encoder here has the same weights, so every estimator returns the same numbers for the same draws."""
    config = ModelConfig(image_shape=(1, 4, 4), z_dim=3, hidden=(8,))
    torch.manual_seed(0)
    flowing = build_vae(ModelConfig(**{**vars(config), "guide": "iaf", "flow_layers": 3}))
    diagonal = build_vae(config)
    state = flowing.state_dict()
    last = "encoder.net.2"
    state[f"{last}.weight"], state[f"{last}.bias"] = state[f"{last}.weight"][:6], state[f"{last}.bias"][:6]
    diagonal.load_state_dict({key: value for key, value in state.items() if key in diagonal.state_dict()})
    x = torch.bernoulli(torch.full((20, 16), 0.3))

    def numbers(vae):
        pyro.set_rng_seed(4)
        nll = -log_likelihood(vae, x, num_samples=500)
        elbo = negative_elbo(vae, x, num_particles=10)
        bound = IWAEBound(num_particles=5, max_plate_nesting=1).loss_and_parts(vae.model, vae.guide, x)
        return nll, elbo, bound.loss, bound.recon, bound.kl

    for flow_number, diagonal_number in zip(numbers(flowing), numbers(diagonal), strict=True):
        assert torch.equal(flow_number, diagonal_number)


@pytest.mark.parametrize("kind", ["iaf", "spline"])
def test_a_flow_guides_log_likelihood_matches_factor_analysis_in_closed_form(kind):
    """Factor analysis (a linear Gaussian decoder): the K = 5000 estimate with a trained flow guide lies within
    0.05 nats of the exact log p(x), the guide's density read at its own draws."""
    decoder = factor_analysis_vae().decoder
    torch.manual_seed(0)
    vae = VAE(MLPEncoder(D, Z, hidden=(16,), context_dim=Z), decoder, Z, D,
              likelihood=GaussianLikelihood(scale=SIGMA), posterior=FlowPosterior(kind, Z, Z))
    x = sample_data(vae, 40)
    # The decoder is the true model; the guide learns its posterior.
    optimizer = torch.optim.Adam([*vae.encoder.parameters(), *vae.posterior.parameters()], lr=0.02)
    elbo = pyro.infer.Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=1)
    for _ in range(200):
        optimizer.zero_grad()
        elbo.differentiable_loss(vae.model, vae.guide, x).backward()
        optimizer.step()
    assert not all(torch.equal(p, torch.zeros_like(p)) for p in vae.posterior.parameters())  # the flow moved
    error = log_likelihood(vae, x, num_samples=5000) - exact_log_marginal(vae, x)
    assert abs(error.mean().item()) < 0.05


def test_a_flow_guides_draws_have_the_density_it_reports():
    """log q of a draw, read from the transforms' cache, equals the density computed afresh by inverting the flow."""
    torch.manual_seed(1)
    flow = FlowPosterior("iaf", 4, 4, layers=2)
    for layer in flow.output_layers:
        nn.init.normal_(layer.weight, std=0.5)
    loc, scale, context = torch.randn(6, 4), torch.rand(6, 4) + 0.5, torch.randn(6, 4)
    q = flow(loc, scale, context)
    z = q.rsample()
    fresh = flow(loc, scale, context)  # new transforms, empty caches: log_prob inverts them
    torch.testing.assert_close(q.log_prob(z), fresh.log_prob(z.clone()))
    assert location(dist.Normal(loc, scale).to_event(1)) is not None
    torch.testing.assert_close(location(flow(loc, scale, context)), fresh.transforms[1](fresh.transforms[0](loc)))


@pytest.mark.parametrize("guide", ["iaf", "spline"])
def test_flow_models_are_counted_on_the_meta_device(guide):
    config = ModelConfig(image_shape=(1, 4, 4), z_dim=3, hidden=(8,), guide=guide, latent_layers=2)
    with torch.device("meta"):
        counted = build_vae(config)
    assert sum(p.numel() for p in counted.parameters()) == sum(p.numel() for p in build_vae(config).parameters())


@pytest.mark.parametrize("kind,expected", [("iaf", "3ab42fc4ca167656"), ("spline", "aa6bb590c5439995")])
def test_a_flow_starts_from_the_same_parameters_and_random_state_for_a_seed(kind, expected):
    """Every parameter and buffer of a fresh flow, and the random numbers drawn after it, are pinned for seed 0:
    how the flow is built may change, its start (and so every training trajectory) may not."""
    torch.manual_seed(0)
    flow = FlowPosterior(kind, 3, 3, layers=2)
    digest = hashlib.sha256()
    for key, value in flow.state_dict().items():
        digest.update(key.encode())
        digest.update(value.numpy().tobytes())
    digest.update(torch.rand(1).numpy().tobytes())
    assert digest.hexdigest()[:16] == expected
