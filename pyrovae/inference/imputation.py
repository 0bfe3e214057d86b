"""Missing cells of a table filled by a trained table VAE, with self-normalized importance weights.

Draw z_k ~ q(z|x_obs), k = 1..K, and weigh each by w_k = p(x_obs, z_k) / q(z_k|x_obs); the normalized weights
w_k / sum_j w_j stand for p(z|x_obs), so sum_k (w_k / sum_j w_j) E[x_miss|z_k] estimates E[x_miss|x_obs]
(Mattei & Frellsen 2019, MIWAE). Multiple imputations pick a z_k by its weight and draw x_miss ~ p(x_miss|z_k)
(sampling-importance-resampling), so that they spread as the posterior does.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch

from pyrovae.inference.evaluate import evaluating, vae_sampler
from pyrovae.inference.importance import ImportanceSampler, trace_weights
from pyrovae.model.tables import TableVAE

ROWS_AT_ONCE = 256
"""Rows imputed together: K draws of each are held at once."""


@torch.no_grad()
def impute(vae: TableVAE, x: torch.Tensor, num_samples: int = 1000, draws: int | None = None) -> torch.Tensor:
    """``x`` (an encoded table, NaN where a cell is missing) with its missing cells filled from ``num_samples``
    posterior draws per row: the weighted mean of E[x|z] (a category's most probable level, a binary column's more
    probable value, a count rounded); with ``draws=M``, ``(M, N, C)``: M imputations drawn by their weights."""
    for name, value in (("num_samples", num_samples), ("draws", draws)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    with evaluating(vae):
        sampler = vae_sampler(vae, x)
        parts = [_impute_rows(vae, sampler, slice(start, start + ROWS_AT_ONCE), num_samples, draws)
                 for start in range(0, len(x), ROWS_AT_ONCE)]
    x = x.to(vae.device)
    return torch.where(x.isnan(), torch.cat(parts, dim=-2), x)


def _impute_rows(vae: TableVAE, sampler: ImportanceSampler, rows: slice, num_samples: int,
                 draws: int | None) -> torch.Tensor:
    """The imputed values of every cell of ``x[rows]``, ``(n, C)``, or ``(draws, n, C)``."""
    guide_trace, model_trace = sampler.traces(rows, num_samples)
    n = len(sampler.x[rows])
    log_weights = trace_weights(guide_trace, model_trace, sampler.layout, num_samples, n)  # (K, n)
    columns = vae.column_distributions(guide_trace.nodes["z"]["value"])  # each of batch shape (K, n)
    if draws is None:
        weights = log_weights.softmax(0)
        return torch.stack([_weighted_guess(column, weights) for column in columns], dim=-1)
    kept = dist.Categorical(logits=log_weights.T).sample((draws,))  # (M, n): the draw each imputation keeps
    values = torch.stack([column.sample().to(log_weights.dtype) for column in columns], dim=-1)  # (K, n, C)
    return values.gather(0, kept[..., None].expand(-1, -1, values.shape[-1]))


def _weighted_guess(column: torch.distributions.Distribution, weights: torch.Tensor) -> torch.Tensor:
    """One column's single imputation under the normalized ``weights`` (K, n) of its K distributions."""
    if isinstance(column, torch.distributions.Categorical):
        return (weights[..., None] * column.probs).sum(0).argmax(-1).to(weights.dtype)
    mean = (weights * column.mean).sum(0)
    if isinstance(column, torch.distributions.Bernoulli):
        return (mean > 0.5).to(weights.dtype)
    if isinstance(column, (torch.distributions.Poisson, torch.distributions.NegativeBinomial)):
        return mean.round()
    return mean
