"""The importance-sampled log-likelihood against closed forms, and the IWAE bound."""

import math

import pyro
import pytest
import torch
from torch import nn

from pyrovae import VAE
from pyrovae.inference import evaluate
from pyrovae.inference.evaluate import (
    chunk_shape,
    log_importance_weights,
    log_likelihood,
    mean_and_stderr,
    negative_elbo,
    vae_sampler,
)
from pyrovae.inference.objectives import IWAEBound
from pyrovae.model.likelihoods import GaussianLikelihood
from pyrovae.model.nets import MLPEncoder, inverse_softplus

Z, D, SIGMA = 2, 5, 0.7


def factor_analysis_vae(seed=0):
    """A linear-Gaussian decoder: x = W z + b + N(0, sigma^2 I), z ~ N(0, I).

    Factor analysis, the analytic case of "Exploring the theory behind Variational Autoencoders".

    The guide is an encoder with random weights whose scales start near 1.5: a proposal
    broader than the posterior, as importance sampling needs.
    """
    torch.manual_seed(seed)
    encoder = MLPEncoder(D, Z, hidden=(16,))
    with torch.no_grad():
        encoder.net[-1].bias[Z:] = inverse_softplus(1.5)
    return VAE(encoder, nn.Linear(Z, D), Z, D, likelihood=GaussianLikelihood(scale=SIGMA))


def exact_log_marginal(vae, x):
    """log N(x; b, W W^T + sigma^2 I) in closed form."""
    W, b = vae.decoder.weight, vae.decoder.bias
    covariance = W @ W.T + SIGMA**2 * torch.eye(D)
    return torch.distributions.MultivariateNormal(b, covariance).log_prob(x)


def sample_data(vae, n, seed=1):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, Z, generator=generator)
    with torch.no_grad():
        return vae.decoder(z) + SIGMA * torch.randn(n, D, generator=generator)


def fit_guide(vae, x, steps=500):
    """Train only the encoder (the decoder is the true model) by SVI on the ELBO."""
    optimizer = torch.optim.Adam(vae.encoder.parameters(), lr=0.02)
    for _ in range(steps):
        optimizer.zero_grad()
        pyro.infer.Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=1).differentiable_loss(
            vae.model, vae.guide, x).backward()
        optimizer.step()
    return vae


@pytest.mark.parametrize("fitted", [False, True])
def test_matches_factor_analysis_in_closed_form(fitted):
    vae = factor_analysis_vae()
    x = sample_data(vae, 40)
    if fitted:
        fit_guide(vae, x)
    error = log_likelihood(vae, x, num_samples=1000) - exact_log_marginal(vae, x)
    assert error.shape == (40,)
    assert abs(error.mean().item()) < 0.05  # the reported number, nats per example
    if fitted:  # a proposal close to the posterior: every single example is within 0.05 nats
        assert error.abs().max().item() < 0.05


def test_chunking_changes_nothing_but_the_memory():
    vae = factor_analysis_vae()
    x = sample_data(vae, 30)
    pyro.set_rng_seed(5)
    whole = log_likelihood(vae, x, num_samples=300)
    tiny_budget = 40_000  # bytes: a few dozen (particle, example) pairs per chunk
    particles, examples = chunk_shape(vae_sampler(vae, x), 300, tiny_budget)
    assert particles < 300 and examples == 1
    pyro.set_rng_seed(5)
    chunked = log_likelihood(vae, x, num_samples=300, memory_budget=tiny_budget)
    exact = exact_log_marginal(vae, x)
    assert abs((chunked - exact).mean()) < 0.05 and abs((whole - exact).mean()) < 0.05


def test_the_bound_tightens_with_k_and_sits_above_the_elbo():
    vae = factor_analysis_vae()  # a random guide: a loose ELBO
    x = sample_data(vae, 200)
    pyro.set_rng_seed(0)
    neg_elbo = negative_elbo(vae, x)
    nll = {k: -log_likelihood(vae, x, num_samples=k).mean().item() for k in (1, 10, 100)}
    exact = -exact_log_marginal(vae, x).mean().item()
    # K = 1 is the ELBO, from another draw: equal within four standard errors of the difference.
    assert abs(nll[1] - neg_elbo.mean().item()) < 4 * math.sqrt(2) * mean_and_stderr(neg_elbo)[1]
    assert neg_elbo.mean().item() > nll[10] > nll[100] > exact - 0.02


def test_standard_error_matches_the_spread_over_repeated_datasets():
    vae = factor_analysis_vae()
    means, stderrs = [], []
    for seed in range(30):
        x = sample_data(vae, 50, seed=100 + seed)
        mean, stderr = mean_and_stderr(-log_likelihood(vae, x, num_samples=50))
        means.append(mean)
        stderrs.append(stderr)
    spread = torch.tensor(means).std().item()
    assert 0.7 < spread / (sum(stderrs) / len(stderrs)) < 1.4


def test_the_standard_error_uses_the_unbiased_spread_and_is_undefined_for_one_value():
    """(1, 2, 3, 6): mean 3, squared deviations summing to 14, so sqrt(14 / 3) / sqrt(4)."""
    mean, stderr = mean_and_stderr(torch.tensor([1.0, 2.0, 3.0, 6.0]))
    assert mean == 3.0 and stderr == pytest.approx(math.sqrt(14 / 3) / 2)
    assert math.isnan(mean_and_stderr(torch.tensor([4.0]))[1])

def test_a_users_own_prior_goes_through_unchanged():
    """A Laplace prior on a 1-D latent: compare with p(x) integrated on a grid."""
    class LaplacePrior(nn.Module):
        def forward(self, y=None):
            return pyro.distributions.Laplace(torch.zeros(1), torch.ones(1)).to_event(1)

    torch.manual_seed(0)
    decoder = nn.Linear(1, 3)
    vae = VAE(MLPEncoder(3, 1, hidden=(8,)), decoder, 1, 3, prior=LaplacePrior(),
              likelihood=GaussianLikelihood(scale=1.0))
    x = torch.randn(10, 3)
    grid = torch.linspace(-30, 30, 60001)[:, None]
    with torch.no_grad():
        log_joint = (torch.distributions.Laplace(0.0, 1.0).log_prob(grid)[:, :, None]
                     + torch.distributions.Normal(decoder(grid)[:, None, :], 1.0).log_prob(x).sum(-1, keepdim=True))
    exact = (log_joint.squeeze(-1).logsumexp(0) + math.log(grid[1, 0] - grid[0, 0])).squeeze()
    assert (log_likelihood(vae, x, num_samples=2000) - exact).abs().max() < 0.05


def test_iwae_loss_equals_an_independent_computation_of_the_bound():
    vae = factor_analysis_vae()
    x = sample_data(vae, 6)
    K = 7
    pyro.set_rng_seed(3)
    loss = IWAEBound(num_particles=K, max_plate_nesting=1).differentiable_loss(vae.model, vae.guide, x)
    # The same noise, drawn by hand: z_k = loc + scale * eps_k, then log w by the textbook densities.
    pyro.set_rng_seed(3)
    loc, scale = vae.encoder(x)
    z = loc + scale * torch.randn(K, *loc.shape)
    normal = torch.distributions.Normal
    log_w = (normal(0.0, 1.0).log_prob(z).sum(-1) + normal(vae.decoder(z), SIGMA).log_prob(x).sum(-1)
             - normal(loc, scale).log_prob(z).sum(-1))
    bound = (log_w.logsumexp(0) - math.log(K)).sum()
    assert loss.item() == pytest.approx(-bound.item(), rel=1e-5)
    # ...and it is the per-example bound: a logsumexp over the batch sum would differ.
    assert loss.item() != pytest.approx(-(log_w.sum(1).logsumexp(0) - math.log(K)).item(), rel=1e-3)


def test_weights_keep_particles_and_examples_apart():
    vae = factor_analysis_vae()
    x = sample_data(vae, 4)
    weights = log_importance_weights(vae, x, num_particles=9)
    assert weights.shape == (9, 4)
    # Each example's weights depend on that example only.
    pyro.set_rng_seed(0)
    first = log_importance_weights(vae, x, num_particles=9)
    pyro.set_rng_seed(0)
    changed = x.clone()
    changed[1] += 1
    second = log_importance_weights(vae, changed, num_particles=9)
    assert torch.equal(first[:, [0, 2, 3]], second[:, [0, 2, 3]]) and not torch.equal(first[:, 1], second[:, 1])


def test_bad_sample_count_is_refused():
    with pytest.raises(ValueError, match="at least one sample"):
        log_likelihood(factor_analysis_vae(), torch.zeros(2, D), num_samples=0)


def test_a_report_that_cannot_fit_the_budget_is_split_not_crashed(monkeypatch):
    vae = factor_analysis_vae()
    x = sample_data(vae, 30)
    batch_sizes = []
    real = evaluate._negative_elbo
    monkeypatch.setattr(evaluate, "_negative_elbo", lambda *args: batch_sizes.append(args[1]) or real(*args))
    report = evaluate.evaluation_report(vae, x, num_samples=50, batch_size=10_000, memory_budget=2_000)
    fitting = chunk_shape(vae_sampler(vae, x), 1, 2_000)[1]  # examples whose single-sample ELBO fits in 2 kB
    assert batch_sizes == [fitting] and fitting < len(x)  # the ELBO's batches shrink to the budget too
    assert report["neg_elbo"] > report["nll"] and abs(-report["nll"] - exact_log_marginal(vae, x).mean().item()) < 0.3


def test_iwae_loss_told_the_dataset_size_is_the_batch_bound_scaled_up():
    """The data plate's scale N/B multiplies the bound; it must not sharpen the weights inside the logsumexp."""
    vae = factor_analysis_vae()
    x = sample_data(vae, 5)
    bound = IWAEBound(num_particles=4, max_plate_nesting=1)
    pyro.set_rng_seed(0)
    batch = bound.differentiable_loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(0)
    dataset = bound.differentiable_loss(vae.model, vae.guide, x, data_size=50)
    assert dataset.item() == pytest.approx(10 * batch.item(), rel=1e-5)


def test_iwae_loss_sums_a_users_inner_plate_per_example():
    """Pixels in a plate of their own inside the data plate give the bound of the same pixels as one event."""
    normal = pyro.distributions.Normal

    def pixel_plate_model(x):
        with pyro.plate("data", len(x), dim=-2):
            z = pyro.sample("z", normal(torch.zeros(len(x), 1), 1.0))
            with pyro.plate("pixels", x.shape[1], dim=-1):
                pyro.sample("x", normal(z, 1.0), obs=x)

    def pixel_plate_guide(x):
        with pyro.plate("data", len(x), dim=-2):
            pyro.sample("z", normal(x.mean(1, keepdim=True), 0.7))

    def event_model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", normal(torch.zeros(len(x)), 1.0))
            pyro.sample("x", normal(z[..., None], 1.0).expand((*z.shape, x.shape[1])).to_event(1), obs=x)

    def event_guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", normal(x.mean(1), 0.7))

    x = torch.randn(6, 3)
    losses = []
    for model, guide, nesting in ((pixel_plate_model, pixel_plate_guide, 2), (event_model, event_guide, 1)):
        pyro.set_rng_seed(2)  # the same draws of z in both
        losses.append(IWAEBound(num_particles=5, max_plate_nesting=nesting).differentiable_loss(model, guide, x))
    assert losses[0].item() == pytest.approx(losses[1].item(), rel=1e-6)
