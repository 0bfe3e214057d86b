"""softplus(v) = log(1 + e^v), computed without torch's log1p.

On a CPU, PyTorch's ``log1p`` (behind ``F.softplus`` and
``binary_cross_entropy_with_logits``) runs about 7 times slower than ``exp`` or ``log``:
for 128 x 784 values, 0.49 ms against 0.03 ms and 0.07 ms. Training evaluates softplus
for the posterior scale of every example and for the Bernoulli log-density of every
pixel, so here it is written with exp and log alone:

    softplus(v) = max(v, 0) + log1p(u),   u = exp(-|v|) in (0, 1],
    log1p(u) = log(w) - ((w - 1) - u) / w,   w = 1 + u.

The second term undoes the rounding of w, so the result is as exact as log1p (it is u
itself where w rounds to 1). The derivative is sigmoid(v).
"""

from __future__ import annotations

import torch


def log1p_exp(v: torch.Tensor) -> torch.Tensor:
    """softplus(v), without autograd (for the inside of autograd functions)."""
    u = v.abs().neg_().exp_()
    w = u + 1
    rounding = (w - 1).sub_(u).div_(w)
    del u
    return w.log_().sub_(rounding).add_(v.clamp_min(0))


class _Softplus(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(v)
        return log1p_exp(v)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        v, = ctx.saved_tensors
        return grad * torch.sigmoid(v)


def softplus(v: torch.Tensor) -> torch.Tensor:
    """log(1 + e^v), differentiable: ``F.softplus`` (exact also past its threshold), faster on a CPU."""
    return _Softplus.apply(v)
