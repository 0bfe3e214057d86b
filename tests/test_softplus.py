"""pyrovae's softplus, written without log1p, equals log(1 + e^v) to the last bits, and so does its gradient."""

import torch
import torch.nn.functional as F

from pyrovae.softplus import softplus


def exact_softplus(v):
    return torch.logaddexp(v.double(), torch.zeros((), dtype=torch.float64))


def test_softplus_is_exact_in_float64_from_tiny_to_huge_values():
    v = torch.cat([torch.linspace(-300, 300, 6001, dtype=torch.float64),
                   torch.tensor([0.0, 1e-12, -1e-12, -745.0, 710.0], dtype=torch.float64)])
    torch.testing.assert_close(softplus(v), exact_softplus(v), rtol=1e-14, atol=0)


def test_softplus_is_as_exact_as_torch_in_float32():
    v = 30 * torch.randn(100_000, generator=torch.Generator().manual_seed(0))
    exact = exact_softplus(v)
    relative_error = ((softplus(v).double() - exact) / exact).abs().max()
    torch_relative_error = ((F.softplus(v).double() - exact) / exact).abs().max()
    assert relative_error <= max(torch_relative_error, 2 ** -23)


def test_softplus_gradient_is_the_sigmoid():
    v = (10 * torch.randn(200, dtype=torch.float64)).requires_grad_()
    weights = torch.randn(200, dtype=torch.float64)
    gradient, = torch.autograd.grad((softplus(v) * weights).sum(), v)
    torch.testing.assert_close(gradient, weights * torch.sigmoid(v.detach()))
    assert torch.autograd.gradcheck(softplus, (v[:20].detach().clone().requires_grad_(),))
