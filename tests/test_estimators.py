"""The IWAE bound's gradient estimators: standard, sticking the landing (STL) and doubly reparameterized (DReG).

Each test trains nothing: it draws many independent gradients at once. The model and guide
hold one copy of every parameter per example of a batch of identical examples, so one
backward pass gives as many independent gradient draws as there are copies, and means are
compared with tolerances from their measured standard errors.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F

from pyrovae.inference.objectives import IWAEBound
from pyrovae.model.nets import inverse_softplus
from pyrovae.model.posteriors import PARENTS, FlowPosterior

D, Z, SIGMA, COPIES = 3, 2, 0.5, 2000
X = torch.tensor([1.0, -0.5, 2.0])


class LinearGaussian:
    """z ~ N(0, I), x ~ N(W z + b, SIGMA^2 I); guide N(loc, softplus(raw)^2), optionally a flow of context h.

    Every parameter has a leading dim of ``COPIES``, all copies equal: copy c of the bound
    depends on copy c of the parameters alone. ``layers=2`` adds q(z2|z1) = N(A z1 + c, s^2)
    and p(z1|z2) = N(z2, I) over a top layer z2 ~ N(0, I).
    """

    def __init__(self, flow: FlowPosterior | None = None, layers: int = 1, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)

        def copies(*shape, scale=1.0):
            value = scale * torch.randn(*shape, generator=generator)
            return value.expand(COPIES, *shape).clone().requires_grad_()

        self.params = {"W": copies(D, Z), "b": copies(D), "loc": copies(Z, scale=0.5), "raw": copies(Z, scale=0.3)}
        if flow is not None:
            self.params["context"] = copies(Z)
        if layers == 2:
            self.params |= {"A": copies(Z, Z, scale=0.5), "c": copies(Z, scale=0.3), "raw2": copies(Z, scale=0.3)}
        self.flow, self.layers = flow, layers

    def model(self, x):
        p = self.params
        with pyro.plate("data", COPIES):
            z = pyro.sample("z", dist.Normal(torch.zeros(Z), 1.0).to_event(1))
            if self.layers == 2:
                z = pyro.sample("z1", dist.Normal(z, 1.0).to_event(1))
            loc = (p["W"] @ z.unsqueeze(-1)).squeeze(-1) + p["b"]
            pyro.sample("x", dist.Normal(loc, SIGMA).to_event(1), obs=x)

    def guide(self, x):
        p = self.params
        with pyro.plate("data", COPIES):
            loc, scale = p["loc"], F.softplus(p["raw"])
            q = dist.Normal(loc, scale).to_event(1) if self.flow is None else self.flow(loc, scale, p["context"])
            lower = pyro.sample("z1" if self.layers == 2 else "z", q)
            if self.layers == 2:
                loc2 = (p["A"] @ lower.unsqueeze(-1)).squeeze(-1) + p["c"]
                pyro.sample("z", dist.Normal(loc2, F.softplus(p["raw2"])).to_event(1), infer={PARENTS: ("z1",)})


def gradients(problem, estimator, particles, seed):
    """Per-copy gradients of the bound, each ``(COPIES, -1)``, by name."""
    pyro.set_rng_seed(seed)
    for value in problem.params.values():
        value.grad = None
    bound = IWAEBound(num_particles=particles, max_plate_nesting=1, estimator=estimator)
    bound.loss_and_parts(problem.model, problem.guide, X.expand(COPIES, D)).loss.backward()
    return {name: value.grad.reshape(COPIES, -1).clone() for name, value in problem.params.items()}


def z_scores(a, b):
    """(mean_a - mean_b) / its standard error, per parameter entry, for independent draws a and b."""
    se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
    return (a.mean(0) - b.mean(0)) / se


def assert_same_expectation(problem, estimator, particles, names=None):
    standard = gradients(problem, "standard", particles, seed=1)
    other = gradients(problem, estimator, particles, seed=2)
    for name in names or standard:
        scores = z_scores(other[name], standard[name])
        assert scores.abs().max() < 4.5, (name, scores)
        assert (standard[name].mean(0).abs() > 3 * standard[name].std(0) / math.sqrt(COPIES)).any(), name  # a signal


@pytest.mark.parametrize("particles", [1, 8])
def test_dreg_gradient_has_the_standard_iwae_gradients_expectation(particles):
    assert_same_expectation(LinearGaussian(), "dreg", particles)


def test_stl_gradient_is_unbiased_for_the_elbo():
    assert_same_expectation(LinearGaussian(), "stl", 1)


def test_stl_leaves_the_models_gradient_alone_and_biases_the_encoders_for_k_above_1():
    """STL drops a score term whose mean is zero only for K = 1 (Tucker et al. 2019): the model's gradient is the
    standard one draw for draw, the encoder's is off by many standard errors."""
    problem = LinearGaussian()
    standard, stl = gradients(problem, "standard", 8, seed=1), gradients(problem, "stl", 8, seed=1)
    for name in ("W", "b"):
        torch.testing.assert_close(stl[name], standard[name])
    other = gradients(problem, "stl", 8, seed=2)
    assert z_scores(other["raw"], standard["raw"]).abs().max() > 8


def test_dreg_with_a_flow_guide_has_the_standard_expectation():
    """The path derivative through the base Gaussian's draw; the flow's context and its own parameters keep the
    ordinary gradient. (Detaching the flow's parameters too would drop their share of the entropy's gradient: its
    flow parameters would be off by up to 46 standard errors here.)"""
    torch.manual_seed(0)
    flow = FlowPosterior("iaf", Z, Z, layers=1)
    torch.nn.init.normal_(flow.output_layers[0].weight, std=0.3)  # off the identity: the context matters
    problem = LinearGaussian(flow=flow)
    assert_same_expectation(problem, "dreg", 8)

    def flow_gradients(estimator, seed, runs=20):
        """The flow's parameters are shared by the copies: one draw of their mean gradient per run."""
        draws = []
        for run in range(runs):
            flow.zero_grad()
            gradients(problem, estimator, 8, seed=1000 * seed + run)
            draws.append(torch.cat([parameter.grad.flatten() for parameter in flow.parameters()]))
        return torch.stack(draws)

    standard, dreg = flow_gradients("standard", 1), flow_gradients("dreg", 2)
    varies = (standard.var(0) > 0) & (dreg.var(0) > 0)  # the autoregressive masks zero some weights' gradients
    assert z_scores(dreg[:, varies], standard[:, varies]).abs().max() < 4.5


def test_dreg_with_two_stochastic_layers_has_the_standard_expectation():
    assert_same_expectation(LinearGaussian(layers=2), "dreg", 8)


def test_dreg_keeps_the_encoders_signal_at_k_64():
    """Rainforth et al. (2018): the standard encoder gradient's signal-to-noise ratio falls as K grows; DReG's does
    not. Mean over draws / standard deviation, per guide parameter, median: DReG's at least 5x the standard's.

    The guide is a little off the exact posterior and broader, as a trained encoder's is.
    """
    problem = LinearGaussian()
    W, b = problem.params["W"][0].detach(), problem.params["b"][0].detach()
    covariance = torch.linalg.inv(torch.eye(Z) + W.T @ W / SIGMA**2)
    with torch.no_grad():
        problem.params["loc"][:] = covariance @ W.T @ (X - b) / SIGMA**2 + 0.3
        problem.params["raw"][:] = torch.tensor([inverse_softplus(1.3 * v) for v in covariance.diag().sqrt()])

    def snr(estimator, seed):
        grads = gradients(problem, estimator, 64, seed)
        both = torch.cat([grads["loc"], grads["raw"]], dim=1)
        return (both.mean(0).abs() / both.std(0)).median()

    assert snr("dreg", 1) >= 5 * snr("standard", 2)


def test_estimators_give_the_same_bound():
    problem = LinearGaussian(flow=FlowPosterior("iaf", Z, Z), layers=2)
    values = []
    for estimator in ("standard", "stl", "dreg"):
        pyro.set_rng_seed(3)
        bound = IWAEBound(num_particles=4, max_plate_nesting=1, estimator=estimator)
        values.append(bound.loss_and_parts(problem.model, problem.guide, X.expand(COPIES, D)).loss)
    torch.testing.assert_close(values[1], values[0])
    torch.testing.assert_close(values[2], values[0])


def test_a_guide_that_is_not_gaussian_is_refused_by_stl_and_dreg():
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Exponential(torch.ones(1)).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Gamma(torch.ones(1), torch.ones(1)).to_event(1))

    with pytest.raises(ValueError, match="guide site 'z' is .*estimator='standard'"):
        IWAEBound(num_particles=2, max_plate_nesting=1, estimator="dreg").loss_and_parts(
            model, guide, torch.ones(4, 1))
    with pytest.raises(ValueError, match="unknown estimator 'drag'"):
        IWAEBound(estimator="drag")
