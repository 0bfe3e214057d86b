"""The log-likelihood and ELBO of a user's own Pyro model and guide, checked against closed forms."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import config_enumerate
from torch import nn

from pyrovae import log_likelihood, negative_elbo
from pyrovae.inference.importance import ImportanceSampler

D, H, Z = 16, 8, 3


class CanonicalVAE(nn.Module):
    """The VAE of Pyro's tutorial, written out: pyro.module, pyro.plate, dist.Normal, dist.Bernoulli."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(D, H), nn.ReLU(), nn.Linear(H, 2 * Z))
        self.decoder = nn.Sequential(nn.Linear(Z, H), nn.ReLU(), nn.Linear(H, D))

    def encode(self, x):
        loc, raw = self.encoder(x).chunk(2, -1)
        return loc, F.softplus(raw) + 0.1

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", len(x)):
            z = pyro.sample("latent", dist.Normal(x.new_zeros(len(x), Z), 1.0).to_event(1))
            pyro.sample("obs", dist.Bernoulli(logits=self.decoder(z), validate_args=False).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", len(x)):
            loc, scale = self.encode(x)
            pyro.sample("latent", dist.Normal(loc, scale).to_event(1))


@pytest.fixture
def canonical():
    torch.manual_seed(0)
    return CanonicalVAE(), torch.bernoulli(torch.full((12, D), 0.3))


def test_a_canonical_pyro_vae_scores_like_a_hand_written_estimator_of_the_same_nets(canonical):
    vae, x = canonical
    K = 300
    pyro.set_rng_seed(7)
    ours = log_likelihood(vae.model, vae.guide, x, num_samples=K)
    pyro.set_rng_seed(7)  # the same noise: the guide's draw is the stream's first
    with torch.no_grad():
        loc, scale = vae.encode(x)
        q = torch.distributions.Normal(loc, scale)
        z = q.rsample((K,))
        log_w = (torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1) - q.log_prob(z).sum(-1)
                 - F.binary_cross_entropy_with_logits(vae.decoder(z), x.expand(K, -1, -1), reduction="none").sum(-1))
    expected = log_w.logsumexp(0) - math.log(K)
    assert ours.shape == (12,)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)
    pyro.set_rng_seed(7)
    torch.testing.assert_close(negative_elbo(vae.model, vae.guide, x, num_particles=K), -log_w.mean(0),
                               atol=1e-4, rtol=0)


def test_per_example_inputs_are_cut_into_chunks_with_the_examples():
    """Labels passed among the model's arguments follow their examples through the chunks."""
    means = torch.tensor([-3.0, 0.0, 4.0])

    def model(x, y):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(means[y], 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    def guide(x, y):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x, 0.6))

    y = torch.arange(30) % 3
    x = means[y] + 0.3 * torch.randn(30)
    exact = dist.Normal(means[y], math.sqrt(1.25)).log_prob(x)
    estimate = log_likelihood(model, guide, x, model_args=(y,), num_samples=2000, memory_budget=20_000)
    assert (estimate - exact).abs().max() < 0.02


def two_layer_chain():
    """z1 -> z2 -> x, all linear-Gaussian, so p(x) is a multivariate normal."""
    A, B, b = torch.tensor([[0.8]]), torch.tensor([[1.0], [-0.5]]), torch.tensor([0.3, -0.2])
    s2, s = 0.7, 0.9

    def model(x):
        with pyro.plate("data", len(x)):
            z1 = pyro.sample("z1", dist.Normal(x.new_zeros(len(x), 1), 1.0).to_event(1))
            z2 = pyro.sample("z2", dist.Normal(z1 @ A.T, s2).to_event(1))
            pyro.sample("x", dist.Normal(z2 @ B.T + b, s).to_event(1), obs=x)

    def guide(x):  # a rough proposal: broad, and mean-shifted towards the data
        with pyro.plate("data", len(x)):
            z1 = pyro.sample("z1", dist.Normal(0.3 * x[:, :1], 1.1).to_event(1))
            pyro.sample("z2", dist.Normal(z1 @ A.T + 0.3 * x[:, :1], 0.9).to_event(1))

    covariance = B @ (A @ A.T + s2**2 * torch.eye(1)) @ B.T + s**2 * torch.eye(2)
    return model, guide, dist.MultivariateNormal(b, covariance)


def test_two_latent_sites_match_the_closed_form_of_a_linear_gaussian_chain():
    model, guide, marginal = two_layer_chain()
    x = marginal.sample((40,))
    error = log_likelihood(model, guide, x, num_samples=5000) - marginal.log_prob(x)
    assert abs(error.mean().item()) < 0.05 and error.abs().max() < 0.1


def discrete_model_and_exact():
    """c ~ Categorical(pi), x ~ N(m_c, 1): p(x) by summing over the three values of c."""
    pi, m = torch.tensor([0.2, 0.5, 0.3]), torch.tensor([-2.0, 0.0, 3.0])

    def model(x):
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Categorical(pi))
            pyro.sample("x", dist.Normal(m[c], 1.0), obs=x)

    def exact(x):
        return (pi.log() + dist.Normal(m, 1.0).log_prob(x[:, None])).logsumexp(-1)

    return model, exact


def test_a_discrete_guide_site_gives_an_unbiased_estimate_of_p_x():
    model, exact = discrete_model_and_exact()

    def guide(x):  # a proposal that knows nothing of x
        with pyro.plate("data", len(x)):
            pyro.sample("c", dist.Categorical(torch.tensor([0.4, 0.3, 0.3])))

    x = torch.full((4000,), 0.8)  # 4000 independent estimates of one p(x), K = 2 each
    p_hat = log_likelihood(model, guide, x, num_samples=2).exp()
    stderr = p_hat.std() / math.sqrt(len(p_hat))
    assert abs(p_hat.mean() - exact(x[:1]).exp()) < 4 * stderr
    assert p_hat.std() > 0  # the guide's draws do vary


def test_a_model_site_marked_for_enumeration_is_summed_out_exactly():
    model, exact = discrete_model_and_exact()

    def guide(x):  # nothing to sample: p(x) = sum_c p(c) p(x|c), without any noise
        pass

    x = torch.tensor([-1.0, 0.5, 2.5])
    torch.testing.assert_close(log_likelihood(config_enumerate(model), guide, x, num_samples=3), exact(x))


def test_enumeration_and_sampled_latents_combine():
    """y enumerated in the model, z sampled by the guide: p(x) = sum_y pi_y N(x; mu_y, 1 + s^2)."""
    pi, mu, s = torch.tensor([0.3, 0.7]), torch.tensor([-1.5, 2.0]), 0.5

    @config_enumerate
    def model(x):
        with pyro.plate("data", len(x)):
            y = pyro.sample("y", dist.Categorical(pi))
            z = pyro.sample("z", dist.Normal(mu[y], 1.0))
            pyro.sample("x", dist.Normal(z, s), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x, 0.8))

    x = torch.tensor([-2.0, 0.0, 1.0, 3.0])
    exact = (pi.log() + dist.Normal(mu, math.sqrt(1 + s**2)).log_prob(x[:, None])).logsumexp(-1)
    assert (log_likelihood(model, guide, x, num_samples=5000) - exact).abs().max() < 0.03


def plate_model(global_latent=False, observed_outside=False, guide_name="z"):
    calls = []

    def model(x):
        calls.append("model")
        w = pyro.sample("w", dist.Normal(0.0, 1.0)) if global_latent else 0.0
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(w, 1.0))
            if not observed_outside:
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        if observed_outside:
            pyro.sample("x", dist.Normal(z.sum(), 1.0), obs=x.sum())

    def guide(x):
        if global_latent:
            pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample(guide_name, dist.Normal(x, 1.0))

    return model, guide, calls


@pytest.mark.parametrize("settings,message", [
    (dict(global_latent=True), r"model site 'w' \(latent\) lies outside the plate 'data'"),
    (dict(observed_outside=True), r"model site 'x' \(observed\) lies outside the plate 'data'"),
    (dict(guide_name="u"), r"guide site 'u' has no site of that name in the model"),
], ids=["global latent", "observation outside the plate", "mismatched names"])
def test_a_broken_contract_is_one_line_naming_the_site_before_any_chunk_runs(settings, message):
    model, guide, calls = plate_model(**settings)
    with pytest.raises(ValueError, match=message) as error:
        log_likelihood(model, guide, torch.randn(50), num_samples=10**9)
    assert "\n" not in str(error.value)
    assert calls == ["model"]  # the probe alone ran


def test_a_latent_the_guide_does_not_sample_is_named():
    def model(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    with pytest.raises(ValueError, match="model site 'z' is latent but the guide does not sample it"):
        log_likelihood(model, lambda x: None, torch.randn(5))


def test_the_particles_go_left_of_the_users_own_plates():
    """A model with a pixel plate inside the data plate: weights per example, summed over the pixels."""
    def model(x):
        with pyro.plate("data", len(x), dim=-2):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x), 1), 1.0))
            with pyro.plate("pixels", x.shape[1], dim=-1):
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", len(x), dim=-2):
            pyro.sample("z", dist.Normal(x.mean(1, keepdim=True), 0.5))

    x = torch.randn(6, 4)
    sampler = ImportanceSampler(model, guide, x)
    assert sampler.layout.particle_dim == -3 and sampler.layout.data_dim == -2
    assert sampler.log_weights(slice(None), 7).shape == (7, 6)
    exact = dist.MultivariateNormal(torch.zeros(4), torch.eye(4) + torch.ones(4, 4)).log_prob(x)
    assert (log_likelihood(model, guide, x, num_samples=4000) - exact).abs().max() < 0.05
