"""Property-based tests (hypothesis): shape handling, the estimators on random small models, and
readers of untrusted files that must fail only with a clear error."""

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from pyrovae import VAE, ModelConfig, TrainConfig, build_vae
from pyrovae.data.idx import read_idx
from pyrovae.inference.evaluate import log_importance_weights, log_likelihood, negative_elbo
from pyrovae.model.likelihoods import GaussianLikelihood
from pyrovae.runs.rundir import CheckpointError, RunDir
from pyrovae.settings import settings_from_json

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # random bytes as a pickle


class ExactPosterior(nn.Module):
    """q(z|x) = p(z|x) for a one-dimensional factor analysis model x = w z + b + N(0, sigma^2 I)."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor, sigma: float):
        super().__init__()
        self.w, self.b, self.sigma = w, b, sigma
        self.precision = 1 + (w @ w) / sigma**2

    def forward(self, x):
        loc = ((x - self.b) @ self.w / self.sigma**2 / self.precision)[:, None]
        return loc, torch.full_like(loc, self.precision.rsqrt().item())


@SETTINGS
@given(x_dim=st.integers(1, 6), batch=st.integers(1, 5), num_samples=st.integers(1, 40),
       sigma=st.floats(0.2, 2.0), seed=st.integers(0, 2**16))
def test_with_the_exact_posterior_as_guide_every_estimate_is_exact(x_dim, batch, num_samples, sigma, seed):
    """Every importance weight then equals p(x): the estimator is exact for any K, and so is the ELBO."""
    generator = torch.Generator().manual_seed(seed)
    w, b = torch.randn(x_dim, generator=generator), torch.randn(x_dim, generator=generator)
    decoder = nn.Linear(1, x_dim)
    with torch.no_grad():
        decoder.weight.copy_(w[:, None])
        decoder.bias.copy_(b)
    vae = VAE(ExactPosterior(w, b, sigma), decoder, 1, x_dim, likelihood=GaussianLikelihood(scale=sigma))
    x = b + 2 * torch.randn(batch, x_dim, generator=generator)
    exact = torch.distributions.MultivariateNormal(b, torch.outer(w, w) + sigma**2 * torch.eye(x_dim)).log_prob(x)
    assert torch.allclose(log_likelihood(vae, x, num_samples=num_samples), exact, atol=1e-4)
    assert torch.allclose(-negative_elbo(vae, x), exact, atol=1e-4)


@SETTINGS
@given(side=st.integers(1, 5), z_dim=st.integers(1, 4), hidden=st.lists(st.integers(1, 9), min_size=1, max_size=2),
       batch=st.integers(1, 6), particles=st.integers(1, 4), prior=st.sampled_from(["standard", "mixture", "vamp"]),
       seed=st.integers(0, 2**16))
def test_model_guide_and_estimators_keep_the_shapes_they_promise(side, z_dim, hidden, batch, particles, prior, seed):
    torch.manual_seed(seed)
    vae = build_vae(ModelConfig(image_shape=(1, side, side), z_dim=z_dim, hidden=hidden, prior=prior,
                                prior_components=2))
    x = torch.bernoulli(torch.full((batch, side * side), 0.5))
    weights = log_importance_weights(vae, x, num_particles=particles)
    assert weights.shape == (particles, batch) and torch.isfinite(weights).all()
    # logsumexp - log K is at least the mean for the same draws (Jensen), so the bound only tightens with K
    assert (weights.logsumexp(0) - math.log(particles) >= weights.mean(0) - 1e-5).all()
    assert negative_elbo(vae, x).shape == (batch,)
    assert log_likelihood(vae, x, num_samples=particles).shape == (batch,)
    with torch.no_grad():
        assert vae.reconstruct(x).shape == (batch, side * side)
        samples = vae.sample(batch)
    assert samples.shape == (batch, side * side) and ((samples >= 0) & (samples <= 1)).all()


@SETTINGS
@given(shape=st.lists(st.integers(0, 5), min_size=0, max_size=4))
def test_data_of_any_other_shape_is_refused_by_name(small_vae, shape):
    x = torch.zeros(shape)
    if len(shape) == 2 and shape[1] == small_vae.x_dim:
        small_vae.check_data(x)
    else:
        with pytest.raises(ValueError, match=r"expects \(N, 16\)"):
            small_vae.check_data(x)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=8)
MODEL_KEYS = st.sampled_from(["image_shape", "z_dim", "net", "hidden", "prior", "prior_components", "likelihood",
                              "likelihood_scale", "learn_scale", "num_classes", "decoder_conditioning", "zdim"])


@settings(max_examples=200, deadline=None)
@given(values=st.dictionaries(MODEL_KEYS, JSON, max_size=4), cls=st.sampled_from([ModelConfig, TrainConfig]))
def test_any_json_settings_build_or_fail_with_a_value_error(values, cls):
    try:
        config = settings_from_json(cls, values, "config.json")
    except ValueError as error:
        assert str(error).startswith("config.json") and "\n" not in str(error)
    else:
        assert isinstance(config, cls)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=64) | st.builds(lambda n, body: bytes([0, 0, 8, n]) + body,
                                              st.integers(0, 4), st.binary(max_size=64)))
def test_any_bytes_as_an_idx_file_read_or_fail_with_a_value_error(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("idx") / "train-images-idx3-ubyte"
    path.write_bytes(raw)
    try:
        array = read_idx(path)
    except ValueError as error:
        assert str(path) in str(error)
    else:
        assert array.size * array.itemsize + 4 + 4 * array.ndim == len(raw)


@settings(max_examples=50, deadline=None)
@given(raw=st.binary(max_size=512))
def test_any_bytes_as_a_checkpoint_fail_with_a_checkpoint_error(tmp_path_factory, raw):
    run = RunDir(tmp_path_factory.mktemp("run"))
    run.file("checkpoint.pt").write_bytes(raw)
    with pytest.raises(CheckpointError, match="checkpoint"):
        run.load_checkpoint()


def test_settings_survive_a_round_trip_through_json():
    config = ModelConfig(image_shape=(1, 8, 8), z_dim=3, hidden=(16, 8), prior="vamp", likelihood="gaussian",
                         learn_scale="decoder")
    text = json.dumps(config.__dict__)
    assert settings_from_json(ModelConfig, json.loads(text), "config.json") == config
