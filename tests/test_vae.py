import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO

from pyrovae import ModelConfig, build_vae
from pyrovae.inference.objectives import MeanFieldELBO
from pyrovae.model.nets import MIN_SCALE


def test_model_and_guide_sites_have_the_documented_shapes(small_vae, binary_batch):
    guide_trace = poutine.trace(small_vae.guide).get_trace(binary_batch)
    model_trace = poutine.trace(poutine.replay(small_vae.model, trace=guide_trace)).get_trace(binary_batch)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()

    z_guide, z_model, x_site = guide_trace.nodes["z"], model_trace.nodes["z"], model_trace.nodes["x"]
    assert z_guide["value"].shape == (5, 3)
    assert z_guide["fn"].batch_shape == (5,) and z_guide["fn"].event_shape == (3,)
    assert z_model["fn"].event_shape == (3,)
    assert x_site["is_observed"] and torch.equal(x_site["value"], binary_batch)
    assert x_site["fn"].batch_shape == (5,) and x_site["fn"].event_shape == (16,)
    for site in (z_guide, z_model, x_site):
        assert [frame.name for frame in site["cond_indep_stack"]] == ["data"]
        assert site["cond_indep_stack"][0].dim == -1
        assert site["log_prob"].shape == (5,)
    # The nets are registered with Pyro, each on the side that uses it.
    assert any(name.startswith("decoder$$$") for name in model_trace.param_nodes)
    assert any(name.startswith("encoder$$$") for name in guide_trace.param_nodes)


@pytest.mark.parametrize("elbo", [MeanFieldELBO, TraceMeanField_ELBO])
def test_meanfield_loss_is_bce_plus_closed_form_kl(small_vae, binary_batch, elbo):
    pyro.set_rng_seed(1)
    loss = elbo().differentiable_loss(small_vae.model, small_vae.guide, binary_batch)
    pyro.set_rng_seed(1)  # the same noise: the guide's draw of z
    z = poutine.trace(small_vae.guide).get_trace(binary_batch).nodes["z"]["value"]

    loc, scale = small_vae.encode(binary_batch)
    bce = F.binary_cross_entropy_with_logits(small_vae.decoder(z), binary_batch, reduction="sum")
    kl = 0.5 * (loc**2 + scale**2 - torch.log(scale**2) - 1).sum()  # Su Jianlin (2018), eq. 4
    assert loss.item() == pytest.approx((bce + kl).item(), abs=1e-4)


@pytest.mark.parametrize("net,image_shape", [("mlp", (1, 8, 8)), ("conv", (1, 8, 8)), ("conv", (1, 28, 28)),
                                             ("mlp", (1, 28, 28))])
@pytest.mark.parametrize("z_dim", [1, 2, 5])
def test_encode_decode_sample_shapes(net, image_shape, z_dim):
    vae = build_vae(ModelConfig(image_shape=image_shape, z_dim=z_dim, net=net, hidden=(16,)))
    d = image_shape[1] * image_shape[2]
    x = torch.rand(4, d)
    loc, scale = vae.encode(x)
    assert loc.shape == scale.shape == (4, z_dim)
    assert (scale >= MIN_SCALE).all()
    assert vae.reconstruct(x).shape == (4, d)
    samples = vae.sample(6)
    assert samples.shape == (6, d) and ((samples >= 0) & (samples <= 1)).all()
    # Leading sample dims pass through the nets (as importance sampling needs).
    assert vae.decode(torch.randn(3, 4, z_dim)).shape == (3, 4, d)


def test_posterior_scale_stays_positive_for_extreme_encoder_outputs(small_vae):
    with torch.no_grad():
        small_vae.encoder.net[-1].bias.fill_(-1e4)
    _, scale = small_vae.encode(torch.rand(2, 16))
    assert (scale >= MIN_SCALE).all() and torch.isfinite(scale).all()


@pytest.mark.parametrize("image_shape", [(1, 10, 10), (3, 7, 13), (2, 28, 28), (1, 1, 5)])
def test_conv_nets_take_images_of_any_size_and_channels(image_shape):
    vae = build_vae(ModelConfig(image_shape=image_shape, net="conv", z_dim=3, hidden=(8,),
                                likelihood="gaussian", learn_scale="decoder"))
    x = torch.rand(4, math.prod(image_shape))
    loc, scale = vae.encode(x)
    assert loc.shape == scale.shape == (4, 3)
    assert vae.decoder(torch.zeros(2, 5, 3)).shape == (2, 5, 2 * math.prod(image_shape))  # locs and scales
    assert vae.reconstruct(x).shape == x.shape


@pytest.mark.parametrize("bad,match", [
    (torch.full((5, 16), float("nan")), "NaN"),
    (torch.rand(5, 15).round(), r"shape \(5, 15\).*\(N, 16\)"),
    (torch.rand(5, 4, 4).round(), r"shape \(5, 4, 4\)"),
    (torch.full((5, 16), 1.5), r"values in \[1.5, 1.5\].*\[0, 1\]"),
    (torch.full((5, 16), 0.5), "grayscale"),
    (torch.ones(5, 16, dtype=torch.long), "floating-point"),
])
def test_check_data_names_the_problem(small_vae, bad, match):
    with pytest.raises(ValueError, match=match):
        small_vae.check_data(bad)


def test_grayscale_targets_opt_in_scores_gray_pixels_by_the_binary_cross_entropy():
    """With the opt-in, gray pixels (refused by default) pass the checks, and the Bernoulli likelihood scores them by
    -BCE, an unnormalized density."""
    vae = build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=2, grayscale_targets=True))
    x, logits = torch.full((3, 16), 0.5), torch.randn(3, 16)
    vae.check_data(x)
    expected = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    torch.testing.assert_close(vae.likelihood(logits).log_prob(x), expected)


def test_model_and_guide_use_pyros_own_normal_and_bernoulli(small_vae, binary_batch):
    guide_trace = poutine.trace(small_vae.guide).get_trace(binary_batch)
    model_trace = poutine.trace(poutine.replay(small_vae.model, trace=guide_trace)).get_trace(binary_batch)
    for site in (guide_trace.nodes["z"], model_trace.nodes["z"]):
        assert type(site["fn"].base_dist) is dist.Normal
    assert type(model_trace.nodes["x"]["fn"].base_dist) is dist.Bernoulli


def test_inference_helpers_return_plain_tensors(small_vae, binary_batch):
    for tensor in (*small_vae.encode(binary_batch), small_vae.decode(torch.randn(2, 3)),
                   small_vae.reconstruct(binary_batch), small_vae.sample(4)):
        assert not tensor.requires_grad
        tensor.numpy()
