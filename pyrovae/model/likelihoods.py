"""Likelihoods p(x|z): map the decoder's raw output to a distribution over ``x`` (event dim 1).

Each says how many raw outputs it needs per pixel (``params_per_pixel``), gives the mean E[x|z], and checks
once, before training, that the data lie in its support, instead of validating arguments on every step.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints
from torch import nn

from pyrovae.model.nets import MIN_SCALE, gaussian_parameters, inverse_softplus

LIKELIHOODS = ("bernoulli", "continuous-bernoulli", "gaussian", "laplace", "discretized-logistic", "table")
"""Names of the built-in likelihoods, as ``--likelihood`` takes them (``table``: a likelihood per column of a table,
:mod:`pyrovae.model.tables`)."""
LEARN_SCALE = ("pixel", "decoder")
"""How a Gaussian, Laplace or logistic scale is learned: one per pixel, or predicted by the decoder per image."""
LEVELS = 256
"""The values an 8-bit pixel takes, 0 ... 255."""
MIN_LOG_SCALE = -7.0
"""The least log-scale of the discretized logistic: at exp(-7) ~ 1e-3 a bin (width 2/255) holds all the mass."""


def _check_unit_interval(x: torch.Tensor, name: str, likelihood: str) -> None:
    low, high = x.min().item(), x.max().item()
    if low < 0 or high > 1:
        raise ValueError(f"{name} has values in [{low:g}, {high:g}], but the {likelihood} likelihood "
                         f"needs pixels in [0, 1]; scale the images (e.g. divide uint8 pixels by 255)")


class BernoulliLikelihood(nn.Module):
    """p(x|z) = prod_d Bernoulli(x_d; sigmoid(logits_d)), exact for binary pixels.

    ``grayscale_targets=True`` also accepts values in [0, 1] (the binary cross-entropy of most VAE code), which
    is then not a normalized log-likelihood: its nats are not comparable to papers'.
    """

    params_per_pixel = 1

    def __init__(self, grayscale_targets: bool = False):
        super().__init__()
        self.grayscale_targets = grayscale_targets

    def forward(self, logits: torch.Tensor) -> dist.Distribution:
        return dist.Bernoulli(logits=logits, validate_args=False).to_event(1)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    def check_data(self, x: torch.Tensor, name: str = "data") -> None:
        """Raise ``ValueError`` if ``x`` lies outside this likelihood's support."""
        _check_unit_interval(x, name, "Bernoulli")
        if not self.grayscale_targets and not torch.all((x == 0) | (x == 1)):
            raise ValueError(f"{name} has grayscale values, but the Bernoulli likelihood is exact only for binary "
                             f"pixels; binarize the data (binarize='static' or 'dynamic'), use "
                             f"likelihood='continuous-bernoulli', or pass grayscale_targets=True to accept an "
                             f"unnormalized likelihood")


class ContinuousBernoulliLikelihood(nn.Module):
    """p(x|z) = prod_d CB(x_d; sigmoid(logits_d)): the Bernoulli with its normalizing constant, a proper density
    for grayscale pixels (Loaiza-Ganem & Cunningham 2019)."""

    params_per_pixel = 1

    def forward(self, logits: torch.Tensor) -> dist.Distribution:
        return dist.ContinuousBernoulli(logits=logits, validate_args=False).to_event(1)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        """E[x|z], which differs from sigmoid(logits) for this distribution."""
        return dist.ContinuousBernoulli(logits=logits, validate_args=False).mean

    def check_data(self, x: torch.Tensor, name: str = "data") -> None:
        _check_unit_interval(x, name, "continuous Bernoulli")


class LocationScaleLikelihood(nn.Module):
    """p(x|z) = prod_d family(x_d; loc_d, scale_d) with the decoder giving ``loc``.

    The scale is fixed (``learn_scale=None``; it weighs reconstruction against the KL), learned per pixel
    (``"pixel"``, needs ``x_dim``), or predicted by the decoder, which then emits locs, then raw scales.
    """

    family: type[dist.Distribution]

    def __init__(self, scale: float = 0.1, learn_scale: str | None = None, x_dim: int | None = None):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"the likelihood scale must be positive, got {scale}")
        if learn_scale not in (None, *LEARN_SCALE):
            raise ValueError(f"unknown learn_scale {learn_scale!r}; choose one of {', '.join(LEARN_SCALE)}")
        self.learn_scale = learn_scale
        self.params_per_pixel = 2 if learn_scale == "decoder" else 1
        if learn_scale == "pixel":
            if x_dim is None:
                raise ValueError("a scale learned per pixel needs x_dim, the number of pixels")
            self.raw_scale = nn.Parameter(torch.full((x_dim,), inverse_softplus(scale - MIN_SCALE)))
        else:
            self.register_buffer("scale", torch.tensor(float(scale)))

    def loc_and_scale(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.learn_scale == "decoder":
            return gaussian_parameters(params)
        if self.learn_scale == "pixel":
            return params, F.softplus(self.raw_scale) + MIN_SCALE
        return params, self.scale

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        loc, scale = self.loc_and_scale(params)
        return self.family(loc, scale.expand_as(loc), validate_args=False).to_event(1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[x|z] = loc."""
        return self.loc_and_scale(params)[0]

    def check_data(self, x: torch.Tensor, name: str = "data") -> None:
        """Raise ``ValueError`` for values whose squares overflow ``x``'s float type: any finite value is in the
        support, but such values make the nets' outputs and the squared error infinite."""
        largest, limit = x.abs().max().item(), torch.finfo(x.dtype).max ** 0.5
        if largest > limit:
            raise ValueError(f"{name} has values as large as {largest:.3g}, whose squares overflow {x.dtype} (beyond "
                             f"{limit:.3g}); rescale the data, e.g. standardize it (subtract its mean, divide by its "
                             f"standard deviation)")


class GaussianLikelihood(LocationScaleLikelihood):
    """p(x|z) = N(x; f(z), diag(scale^2)): squared error plus a log-normalizer."""

    family = dist.Normal


class LaplaceLikelihood(LocationScaleLikelihood):
    """p(x|z) = Laplace(x; f(z), scale): absolute error plus a log-normalizer, robust to outliers."""

    family = dist.Laplace


class DiscretizedLogistic(TorchDistribution):
    """The mass of each 8-bit pixel's bin under a logistic: Salimans et al. (2017), as in Kingma et al. (2016).

    A pixel x maps to the centre 2x - 1 of a bin of half-width 1/255 in [-1, 1], the end bins reaching to
    -inf and +inf. With u and l the bin's edges standardized by ``loc`` and ``scale``, the inner bins'

        log[sigmoid(u) - sigmoid(l)] = u - softplus(u) - softplus(l) + log(1 - exp(l - u))

    stays finite far into both tails; the end bins are log sigmoid(u) and log sigmoid(-l).
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.unit_interval

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, validate_args: bool | None = None):
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape: torch.Size, _instance: DiscretizedLogistic | None = None) -> DiscretizedLogistic:
        return DiscretizedLogistic(self.loc.expand(batch_shape), self.scale.expand(batch_shape), validate_args=False)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        centre = 2 * torch.round(x * (LEVELS - 1)) / (LEVELS - 1) - 1
        half_width = 1 / (LEVELS - 1)
        upper, lower = (centre + half_width - self.loc) / self.scale, (centre - half_width - self.loc) / self.scale
        inner = upper - F.softplus(upper) - F.softplus(lower) + torch.log(-torch.expm1(lower - upper))
        return torch.where(centre <= -1, F.logsigmoid(upper), torch.where(centre >= 1, F.logsigmoid(-lower), inner))

    def sample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        """A logistic draw, rounded to its bin's pixel value in [0, 1]."""
        with torch.no_grad():
            shape = self._extended_shape(torch.Size(sample_shape))
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device).clamp(1e-6, 1 - 1e-6)
            draw = self.loc + self.scale * (torch.log(u) - torch.log1p(-u))
            return torch.round((draw.clamp(-1, 1) + 1) / 2 * (LEVELS - 1)) / (LEVELS - 1)

    @property
    def mean(self) -> torch.Tensor:
        """The logistic's centre, as a pixel in [0, 1] (the bins' mean, but for the end bins' tails)."""
        return (self.loc.clamp(-1, 1) + 1) / 2


class DiscretizedLogisticLikelihood(nn.Module):
    """p(x|z) = prod_d DiscretizedLogistic(x_d; loc_d, scale_d) for 8-bit pixels, the decoder giving ``loc``.

    Exactly normalized, so its bits per dimension compare with published ones. The log-scale, clamped at
    :data:`MIN_LOG_SCALE`, is predicted by the decoder (``"decoder"``) or learned per pixel (``"pixel"``).
    """

    def __init__(self, learn_scale: str = "decoder", x_dim: int | None = None):
        super().__init__()
        if learn_scale not in LEARN_SCALE:
            raise ValueError(f"the discretized logistic learns its scale: learn_scale must be one of "
                             f"{', '.join(LEARN_SCALE)}, got {learn_scale!r}")
        self.learn_scale = learn_scale
        self.params_per_pixel = 2 if learn_scale == "decoder" else 1
        if learn_scale == "pixel":
            if x_dim is None:
                raise ValueError("a scale learned per pixel needs x_dim, the number of pixels")
            self.log_scale = nn.Parameter(torch.full((x_dim,), -2.0))

    def loc_and_scale(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.learn_scale == "decoder":
            loc, log_scale = params.chunk(2, dim=-1)
        else:
            loc, log_scale = params, self.log_scale
        return loc, log_scale.clamp(min=MIN_LOG_SCALE).exp()

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        return DiscretizedLogistic(*self.loc_and_scale(params), validate_args=False).to_event(1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return DiscretizedLogistic(*self.loc_and_scale(params), validate_args=False).mean

    def check_data(self, x: torch.Tensor, name: str = "data") -> None:
        """Raise ``ValueError`` unless ``x`` holds 8-bit pixels: multiples of 1/255 in [0, 1]."""
        _check_unit_interval(x, name, "discretized logistic")
        off = (x * (LEVELS - 1) - torch.round(x * (LEVELS - 1))).abs().max().item() if len(x) else 0.0
        if off > 1e-3:
            raise ValueError(f"{name} are not 8-bit pixels (multiples of 1/255), which the discretized-logistic "
                             f"likelihood scores; use it on 8-bit images (fashion-mnist, your own uint8 images) "
                             f"with binarize='none', or choose likelihood='continuous-bernoulli' for other "
                             f"grayscale data")
