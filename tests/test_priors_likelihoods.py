import math

import pyro
import pytest
import torch
import torch.distributions as td
import torch.nn.functional as F
from pyro import poutine

from pyrovae import ModelConfig, TrainConfig, build_vae, evaluation_report, fit, from_arrays
from pyrovae.inference.objectives import MeanFieldELBO, TraceELBO
from pyrovae.model.build import build_likelihood, build_prior
from pyrovae.model.likelihoods import (
    ContinuousBernoulliLikelihood,
    DiscretizedLogistic,
    GaussianLikelihood,
    LaplaceLikelihood,
)
from pyrovae.model.nets import MIN_SCALE, MLPEncoder
from pyrovae.model.priors import PRIORS

Z, D, C, B = 3, 16, 4, 5
LOG_2PI = math.log(2 * math.pi)


def diag_normal_log_density(z, loc, scale):
    return (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * LOG_2PI).sum(-1)


def prior_config(name):
    return ModelConfig(image_shape=(1, 4, 4), z_dim=Z, hidden=(8,), prior=name, prior_components=6, num_classes=C)


def make_prior(name):
    config = prior_config(name)
    return build_prior(config, MLPEncoder(D, Z, hidden=(8,)))


LABELS = torch.tensor([0, 3, 1, 1, 2])


@pytest.mark.parametrize("name", PRIORS)
def test_prior_sample_and_log_prob_shapes_under_the_plates(name):
    prior = make_prior(name)
    with pyro.plate("data", B):
        z = pyro.sample("z", prior(LABELS))
    assert z.shape == (B, Z)
    assert prior(LABELS).log_prob(z).shape == (B,)
    with pyro.plate("particles", 7, dim=-2), pyro.plate("data", B):
        trace = poutine.trace(lambda: pyro.sample("z", prior(LABELS))).get_trace()
    trace.compute_log_prob()
    assert trace.nodes["z"]["value"].shape == (7, B, Z)
    assert trace.nodes["z"]["log_prob"].shape == (7, B)


@pytest.mark.parametrize("name", PRIORS)
def test_prior_log_prob_matches_a_direct_computation(name):
    prior = make_prior(name)
    z = torch.randn(B, Z)
    if name == "standard":
        expected = diag_normal_log_density(z, torch.zeros(Z), torch.ones(Z))
    elif name == "class-means":
        expected = diag_normal_log_density(z, prior.means[LABELS], torch.ones(Z))
    else:
        if name == "mixture":
            weights = prior.logits.softmax(0)
            locs, scales = prior.locs, F.softplus(prior.raw_scales)
        else:  # the VampPrior: uniform weights over the encoder's posteriors at the pseudo-inputs
            locs, scales = prior.encoder(prior.pseudo_inputs)
            weights = torch.full((len(locs),), 1 / len(locs))
        per_component = diag_normal_log_density(z[:, None, :], locs, scales)  # (B, K)
        expected = (per_component.exp() * weights).sum(-1).log()
    assert torch.allclose(prior(LABELS).log_prob(z), expected, atol=1e-5)


@pytest.mark.parametrize("name", ["class-means", "mixture", "vamp"])
def test_prior_parameters_are_learned(name):
    vae = build_vae(prior_config(name))
    prior_params = [p.detach().clone() for p in vae.prior.parameters()]
    optimizer = torch.optim.Adam(vae.parameters(), lr=0.05)
    x = torch.bernoulli(torch.full((B, D), 0.3))
    for _ in range(3):
        optimizer.zero_grad()
        TraceELBO().differentiable_loss(vae.model, vae.guide, x, LABELS).backward()
        optimizer.step()
    assert all(not torch.equal(a, b) for a, b in zip(prior_params, vae.prior.parameters()))


def test_a_checkpoint_holding_the_standard_priors_unit_scale_still_loads():
    """Checkpoints of pyrovae 0.1.0's development stored N(0, I)'s constant unit scale; it is dropped on loading."""
    vae = build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=Z))
    state = vae.state_dict() | {"prior.scale": torch.ones(Z)}
    fresh = build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=Z))
    fresh.load_state_dict(state)
    assert fresh.state_dict().keys() == vae.state_dict().keys()
    assert all(torch.equal(fresh.state_dict()[key], value) for key, value in vae.state_dict().items())
    with pytest.raises(RuntimeError, match="prior.other"):
        fresh.load_state_dict(vae.state_dict() | {"prior.other": torch.ones(Z)})


def test_class_means_prior_needs_labels():
    with pytest.raises(ValueError, match="needs labels y"):
        make_prior("class-means")(None)


def test_class_means_closed_form_kl_is_seed_000_eq_8():
    vae = build_vae(prior_config("class-means"))
    x = torch.bernoulli(torch.full((B, D), 0.3))
    parts = MeanFieldELBO().loss_and_parts(vae.model, vae.guide, x, LABELS)
    mu, sigma = vae.encode(x)
    mu_y = vae.prior.means[LABELS]
    eq_8 = 0.5 * ((mu - mu_y) ** 2 + sigma**2 - (sigma**2).log() - 1).sum()
    assert parts.kl.item() == pytest.approx(eq_8.item(), abs=1e-4)
    assert parts.loss.item() == pytest.approx((parts.recon + parts.kl).item(), rel=1e-6)


def likelihood_config(name, learn_scale=None):
    return ModelConfig(image_shape=(1, 4, 4), z_dim=Z, likelihood=name, likelihood_scale=0.3,
                       learn_scale=learn_scale)


LIKELIHOOD_CASES = [("bernoulli", None), ("continuous-bernoulli", None), ("gaussian", None),
                    ("gaussian", "pixel"), ("gaussian", "decoder"), ("laplace", None), ("laplace", "decoder")]


def direct_log_likelihood(likelihood, params, x):
    if isinstance(likelihood, ContinuousBernoulliLikelihood):
        lam = torch.sigmoid(params)
        log_norm = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))
        return (x * lam.log() + (1 - x) * (1 - lam).log() + log_norm).sum(-1)
    if isinstance(likelihood, (GaussianLikelihood, LaplaceLikelihood)):
        if likelihood.learn_scale == "decoder":
            loc, raw = params.chunk(2, -1)
            scale = F.softplus(raw) + MIN_SCALE
        elif likelihood.learn_scale == "pixel":
            loc, scale = params, F.softplus(likelihood.raw_scale) + MIN_SCALE
        else:
            loc, scale = params, torch.full_like(params, 0.3)
        if isinstance(likelihood, GaussianLikelihood):
            return diag_normal_log_density(x, loc, scale)
        return (-(x - loc).abs() / scale - torch.log(2 * scale)).sum(-1)
    p = torch.sigmoid(params)
    return (x * p.log() + (1 - x) * (1 - p).log()).sum(-1)


@pytest.mark.parametrize("name,learn_scale", LIKELIHOOD_CASES)
def test_likelihood_log_prob_and_shapes(name, learn_scale):
    config = likelihood_config(name, learn_scale)
    likelihood = build_likelihood(config)
    params = torch.randn(7, B, likelihood.params_per_pixel * D)  # (particles, data, decoder outputs)
    x = torch.bernoulli(torch.full((B, D), 0.5)) if name == "bernoulli" else torch.rand(B, D)
    distribution = likelihood(params)
    assert distribution.batch_shape == (7, B) and distribution.event_shape == (D,)
    assert torch.allclose(distribution.log_prob(x), direct_log_likelihood(likelihood, params, x), atol=1e-4)
    assert likelihood.mean(params).shape == (7, B, D)
    # The decoder's width follows from the likelihood.
    vae = build_vae(config)
    assert vae.decoder(torch.zeros(1, Z)).shape == (1, likelihood.params_per_pixel * D)


def test_per_pixel_scale_is_learned_and_starts_at_the_given_scale():
    vae = build_vae(likelihood_config("gaussian", "pixel"))
    scale = F.softplus(vae.likelihood.raw_scale) + MIN_SCALE
    assert torch.allclose(scale, torch.full((D,), 0.3))
    assert any(p is vae.likelihood.raw_scale for p in vae.parameters())


@pytest.mark.parametrize("name,data,match", [
    ("bernoulli", torch.full((2, D), 0.5), "grayscale"),
    ("bernoulli", torch.full((2, D), 2.0), r"\[0, 1\]"),
    ("continuous-bernoulli", torch.full((2, D), -0.1), r"continuous Bernoulli.*\[0, 1\]"),
])
def test_likelihoods_refuse_data_outside_their_support(name, data, match):
    with pytest.raises(ValueError, match=match):
        build_vae(likelihood_config(name)).check_data(data)


@pytest.mark.parametrize("name", ["gaussian", "laplace"])
def test_gaussian_and_laplace_score_values_far_outside_the_unit_interval(name):
    vae = build_vae(likelihood_config(name))
    x, params = torch.randn(3, D) * 5, torch.randn(3, D)
    vae.check_data(x)
    log_likelihood = vae.likelihood(params).log_prob(x)
    torch.testing.assert_close(log_likelihood, direct_log_likelihood(vae.likelihood, params, x))
    assert torch.isfinite(log_likelihood).all()


@pytest.mark.parametrize("overrides,match", [
    ({"learn_scale": "pixel"}, "gaussian, laplace or discretized-logistic"),
    ({"likelihood": "gaussian", "likelihood_scale": 0.0}, "positive"),
    ({"prior": "class-means"}, "num_classes"),
    ({"prior": "nope"}, "unknown prior"),
    ({"prior": "mixture", "prior_components": 0}, "at least 1"),
])
def test_bad_model_settings_are_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        build_vae(ModelConfig(image_shape=(1, 4, 4), **overrides))


def test_a_users_own_prior_plugs_in_without_library_changes():
    class StudentTPrior(torch.nn.Module):
        def __init__(self, z_dim):
            super().__init__()
            self.df = torch.nn.Parameter(torch.tensor(3.0))
            self.z_dim = z_dim

        def forward(self, y=None):
            return pyro.distributions.StudentT(self.df, torch.zeros(self.z_dim), 1.0).to_event(1)

    vae = build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=Z))
    vae.prior = StudentTPrior(Z)
    x = torch.bernoulli(torch.full((B, D), 0.3))
    loss = TraceELBO().differentiable_loss(vae.model, vae.guide, x)
    loss.backward()
    assert torch.isfinite(loss) and vae.prior.df.grad is not None


# --- the discretized logistic (8-bit pixels) ----------------------------------------------------------

PIXEL_VALUES = torch.arange(256, dtype=torch.float64) / 255


def logistic_cdf(value, loc, scale):
    """The logistic's CDF built from torch's transforms: U(0, 1) pushed through logit, then loc + scale * u."""
    logistic = td.TransformedDistribution(td.Uniform(torch.zeros_like(loc), torch.ones_like(loc)),
                                          [td.SigmoidTransform().inv, td.AffineTransform(loc, scale)])
    return logistic.cdf(value.clamp(-1e6, 1e6))


@pytest.mark.parametrize("loc,scale", [(0.0, 0.1), (0.93, 0.004), (-3.0, 0.5), (5.0, 1e-3), (0.2, 7.0)])
def test_the_discretized_logistic_sums_to_one_over_the_256_values(loc, scale):
    pixel = DiscretizedLogistic(torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))
    log_mass = pixel.log_prob(PIXEL_VALUES)
    assert torch.isfinite(log_mass).all()
    assert abs(log_mass.logsumexp(0).item()) < 1e-9


def test_the_discretized_logistic_is_the_logistic_mass_of_each_bin():
    loc, scale = torch.tensor([0.1, -0.6, 0.99], dtype=torch.float64), torch.tensor([0.05, 0.3, 0.02],
                                                                                    dtype=torch.float64)
    centres = 2 * PIXEL_VALUES[:, None] - 1
    upper = torch.where(centres >= 1, torch.tensor(math.inf, dtype=torch.float64), centres + 1 / 255)
    lower = torch.where(centres <= -1, torch.tensor(-math.inf, dtype=torch.float64), centres - 1 / 255)
    mass = logistic_cdf(upper, loc, scale) - logistic_cdf(lower, loc, scale)
    computed = DiscretizedLogistic(loc, scale).log_prob(PIXEL_VALUES[:, None].expand(256, 3)).exp()
    assert torch.allclose(computed, mass, atol=1e-12)


def test_discretized_logistic_samples_fall_in_the_bins_with_their_masses():
    pixel = DiscretizedLogistic(torch.tensor(0.1), torch.tensor(0.02))
    draws = pixel.sample((40_000,))
    assert torch.equal(draws, torch.round(draws * 255) / 255) and draws.min() >= 0 and draws.max() <= 1
    counts = torch.bincount(torch.round(draws * 255).long(), minlength=256).double()
    expected = 40_000 * pixel.log_prob(PIXEL_VALUES.float()).exp().double()
    busy = expected > 50
    assert expected[busy].sum() > 0.99 * 40_000
    assert ((counts[busy] - expected[busy]).abs() < 5 * expected[busy].sqrt()).all()  # within 5 standard deviations


@pytest.mark.parametrize("learn_scale", ["decoder", "pixel"])
def test_the_discretized_logistic_likelihood_learns_its_scale_and_sizes_the_decoder(learn_scale):
    config = ModelConfig(image_shape=(1, 4, 4), z_dim=Z, likelihood="discretized-logistic", learn_scale=learn_scale)
    vae = build_vae(config)
    params = torch.randn(7, B, vae.likelihood.params_per_pixel * D)
    x = torch.randint(0, 256, (B, D)) / 255
    assert vae.likelihood(params).log_prob(x).shape == (7, B)
    assert vae.decoder(torch.zeros(1, Z)).shape == (1, (2 if learn_scale == "decoder" else 1) * D)
    assert ModelConfig(likelihood="discretized-logistic").learn_scale == "decoder"  # always learned


def test_the_discretized_logistic_refuses_pixels_that_are_not_8_bit():
    vae = build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=Z, likelihood="discretized-logistic"))
    vae.check_data(torch.randint(0, 256, (B, D)) / 255)
    with pytest.raises(ValueError, match=r"not 8-bit pixels \(multiples of 1/255\).*continuous-bernoulli"):
        vae.check_data(torch.randint(0, 17, (B, D)) / 16)  # the digits' 17 gray levels


@pytest.mark.slow  # 30 epochs: 5 s
def test_a_vae_of_8_bit_images_reaches_a_finite_bits_per_dim_well_under_8():
    generator = torch.Generator().manual_seed(0)
    shade = torch.randint(0, 256, (400, 1, 1, 1), generator=generator)
    stripes = (torch.arange(8).reshape(1, 1, 1, 8) * 32 + shade) % 256  # 400 shaded 8x8 stripe patterns
    images = stripes.expand(400, 1, 8, 8).float() / 255
    data = from_arrays(images, torch.zeros(400, dtype=torch.long))
    vae = build_vae(ModelConfig(image_shape=(1, 8, 8), z_dim=2, hidden=(32,), likelihood="discretized-logistic"))
    fit(vae, data, TrainConfig(epochs=30, batch_size=32, lr=1e-2), progress=False, verbose=False)
    report = evaluation_report(vae, data.test.x, num_samples=50)
    assert math.isfinite(report["bits_per_dim"]) and report["bits_per_dim"] < 6.5, report  # uniform pixels: 8
