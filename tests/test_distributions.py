"""The faster log-densities of a training step equal the general formulas, in value and in gradient."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch.distributions import kl_divergence

from pyrovae import ModelConfig, build_vae
from pyrovae.distributions import IndependentBernoulli, ReparameterizedNormal, UnitNormal
from pyrovae.likelihoods import BernoulliLikelihood


def bernoulli_reference(logits, value):
    return torch.distributions.Bernoulli(logits=logits, validate_args=False).log_prob(value).sum(-1)


@pytest.mark.parametrize("logit_scale", [0.1, 3.0, 30.0, 300.0])
def test_bernoulli_log_prob_equals_torch_in_float64_for_small_and_huge_logits(logit_scale):
    generator = torch.Generator().manual_seed(0)
    logits = logit_scale * torch.randn(6, 50, dtype=torch.float64, generator=generator)
    logits[0, :3] = torch.tensor([0.0, 1e-12, -1e-12])
    for value in (torch.bernoulli(torch.full_like(logits, 0.5), generator=generator),
                  torch.rand(logits.shape, dtype=torch.float64, generator=generator)):  # grayscale targets too
        fast = BernoulliLikelihood()(logits).log_prob(value)
        torch.testing.assert_close(fast, bernoulli_reference(logits, value), rtol=1e-12, atol=1e-12)


def test_bernoulli_log_prob_is_as_exact_as_torch_in_float32():
    generator = torch.Generator().manual_seed(1)
    logits = 20 * torch.randn(64, 784, generator=generator)
    value = torch.bernoulli(torch.full_like(logits, 0.3), generator=generator)
    exact = bernoulli_reference(logits.double(), value.double())
    fast_error = (BernoulliLikelihood()(logits).log_prob(value).double() - exact).abs().max()
    torch_error = (bernoulli_reference(logits, value).double() - exact).abs().max()
    assert fast_error <= 2 * torch_error + 1e-6


def test_bernoulli_gradients_match_autograd_of_the_reference_and_broadcast():
    logits = (4 * torch.randn(3, 5, 7, dtype=torch.float64)).requires_grad_()  # (K, B, D) particles
    value = torch.rand(5, 7, dtype=torch.float64).requires_grad_()  # (B, D), broadcast over K
    weights = torch.randn(3, 5, dtype=torch.float64)
    fast = torch.autograd.grad((BernoulliLikelihood()(logits).log_prob(value) * weights).sum(), (logits, value))
    reference = torch.autograd.grad((bernoulli_reference(logits, value) * weights).sum(), (logits, value))
    assert fast[0].shape == logits.shape and fast[1].shape == value.shape
    for a, b in zip(fast, reference):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda f, x: BernoulliLikelihood()(f).log_prob(x), (logits, value))


def test_unit_normal_is_a_normal_with_scale_one():
    loc = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    z = torch.randn(4, 3, dtype=torch.float64)
    unit = UnitNormal(loc)
    general = dist.Normal(loc, torch.ones_like(loc))
    torch.testing.assert_close(unit.log_prob(z), general.log_prob(z))
    grad_unit, = torch.autograd.grad(unit.log_prob(z).sum(), loc)
    grad_general, = torch.autograd.grad(general.log_prob(z).sum(), loc)
    torch.testing.assert_close(grad_unit, grad_general)
    expanded = UnitNormal(torch.zeros(3)).expand((5, 3))
    assert isinstance(expanded, UnitNormal) and expanded.batch_shape == (5, 3)
    assert torch.equal(expanded.scale, torch.ones(5, 3))


def test_kl_to_a_unit_normal_equals_the_general_gaussian_kl():
    q = dist.Normal(torch.randn(4, 3, dtype=torch.float64), torch.rand(4, 3, dtype=torch.float64) + 0.1)
    p_loc = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(kl_divergence(q, UnitNormal(p_loc)), kl_divergence(q, dist.Normal(p_loc, 1.0)))
    independent = kl_divergence(q.to_event(1), UnitNormal(p_loc).to_event(1))
    torch.testing.assert_close(independent, kl_divergence(q, dist.Normal(p_loc, 1.0)).sum(-1))


def test_reparameterized_normal_scores_its_own_draw_like_the_general_density():
    loc = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    scale = (torch.rand(6, 4, dtype=torch.float64) + 0.2).requires_grad_()
    q = ReparameterizedNormal(loc, scale)
    z = q.rsample()
    fast = q.log_prob(z)
    general = dist.Normal(loc, scale).log_prob(z)  # differentiates through z as well
    torch.testing.assert_close(fast, general)
    fast_grads = torch.autograd.grad(fast.sum(), (loc, scale), materialize_grads=True)  # loc's is zero
    for a, b in zip(fast_grads, torch.autograd.grad(general.sum(), (loc, scale))):
        torch.testing.assert_close(a, b)
    other = torch.randn(6, 4, dtype=torch.float64)  # any other value: the general formula
    torch.testing.assert_close(q.log_prob(other), dist.Normal(loc, scale).log_prob(other))


def test_reparameterized_normal_under_a_particles_plate():
    loc, scale = torch.zeros(5, 2), torch.ones(5, 2)
    with pyro.plate("particles", 7, dim=-2), pyro.plate("data", 5):
        trace = poutine.trace(lambda: pyro.sample("z", ReparameterizedNormal(loc, scale).to_event(1))).get_trace()
    trace.compute_log_prob()
    site = trace.nodes["z"]
    assert isinstance(site["fn"].base_dist, ReparameterizedNormal)
    assert site["value"].shape == (7, 5, 2) and site["log_prob"].shape == (7, 5)
    torch.testing.assert_close(site["log_prob"], dist.Normal(loc, scale).to_event(1).log_prob(site["value"]))


@pytest.mark.parametrize("make", [
    lambda: UnitNormal(torch.zeros(5, 3)),
    lambda: ReparameterizedNormal(torch.zeros(5, 3), torch.ones(5, 3)),
    lambda: IndependentBernoulli(dist.Bernoulli(logits=torch.zeros(5, 3)), 1),
])
def test_expanding_to_the_same_shape_keeps_the_distribution_and_to_another_copies_it(make):
    d = make()
    assert d.expand(d.batch_shape) is d
    wider = d.expand((4, *d.batch_shape))
    assert type(wider) is type(d) and wider.batch_shape == (4, *d.batch_shape)
    assert wider.event_shape == d.event_shape and wider.sample().shape == (4, 5, 3)


def test_checkpoints_from_before_the_unit_normal_prior_still_load():
    vae = build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=2, hidden=(8,)))
    old = {**vae.state_dict(), "prior.scale": torch.ones(2)}  # the N(0, I) prior's scale buffer, now gone
    vae.load_state_dict(old)
    assert "prior.scale" not in vae.state_dict()
