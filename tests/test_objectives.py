import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyrovae.inference.objectives import MeanFieldELBO, TraceELBO
from pyrovae.training.step import SVIStep


def loss_and_grads(elbo, vae, x, seed=3):
    vae.zero_grad()
    pyro.set_rng_seed(seed)
    loss = elbo.differentiable_loss(vae.model, vae.guide, x)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in vae.parameters()]


@pytest.mark.parametrize("ours,pyros", [(TraceELBO, Trace_ELBO), (MeanFieldELBO, TraceMeanField_ELBO)])
@pytest.mark.parametrize("num_particles,vectorize", [(1, False), (3, True)])
def test_device_resident_objectives_match_pyro(small_vae, binary_batch, ours, pyros, num_particles, vectorize):
    kwargs = dict(num_particles=num_particles, vectorize_particles=vectorize)
    our_loss, our_grads = loss_and_grads(ours(**kwargs), small_vae, binary_batch)
    pyro_loss, pyro_grads = loss_and_grads(pyros(**kwargs), small_vae, binary_batch)
    assert our_loss == pytest.approx(pyro_loss, rel=1e-6)
    for ours_g, pyros_g in zip(our_grads, pyro_grads):
        assert torch.allclose(ours_g, pyros_g, atol=1e-6)


def test_training_steps_never_read_the_loss_back_to_the_host(small_vae, binary_batch, monkeypatch):
    optimizer = torch.optim.Adam(small_vae.parameters())
    step = SVIStep(small_vae, optimizer, TraceELBO())
    step(binary_batch)  # the first step may validate
    adam_step_counters = [state["step"] for state in optimizer.state.values()]  # host-side by design
    reads = []
    for name in ("item", "__bool__", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original):
            if not any(self is counter for counter in adam_step_counters):
                reads.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    steps = [step(binary_batch) for _ in range(5)]
    assert reads == []
    assert all(torch.is_tensor(part) and not part.requires_grad for parts, _ in steps for part in parts)
    assert all(finite.dtype == torch.bool and finite.shape == () for _, finite in steps)


def test_discrete_guide_sites_are_refused_with_a_pointer():
    def model():
        pyro.sample("c", dist.Bernoulli(0.5))

    def guide():
        pyro.sample("c", dist.Bernoulli(0.3))

    with pytest.raises(ValueError, match="TraceGraph_ELBO"):
        TraceELBO().differentiable_loss(model, guide)
