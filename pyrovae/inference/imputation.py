"""Missing cells of a table filled by a trained table VAE, with self-normalized importance weights.

Draw z_k ~ q(z|x_obs), k = 1..K, and weigh each by w_k = p(x_obs, z_k) / q(z_k|x_obs); the normalized weights
w_k / sum_j w_j stand for p(z|x_obs), so sum_k (w_k / sum_j w_j) E[x_miss|z_k] estimates E[x_miss|x_obs]
(Mattei & Frellsen 2019, MIWAE). Multiple imputations pick a z_k by its weight and draw x_miss ~ p(x_miss|z_k)
(sampling-importance-resampling), so that they spread as the posterior does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyro.distributions as dist
import torch
from tqdm.auto import tqdm

from pyrovae.data.tables import is_frame
from pyrovae.inference.evaluate import evaluating, vae_sampler
from pyrovae.inference.importance import ImportanceSampler, trace_weights
from pyrovae.model.tables import TableVAE

if TYPE_CHECKING:
    import pandas as pd

ROWS_AT_ONCE = 256
"""Rows imputed together: K draws of each are held at once."""
IMPUTATION = "imputation"
"""The column that numbers multiple imputations, 1 ... M."""


def impute(vae: TableVAE, table: pd.DataFrame | torch.Tensor, num_samples: int = 1000, draws: int | None = None,
           progress: bool = False, name: str = "the table") -> pd.DataFrame | torch.Tensor:
    """``table`` with its missing cells filled from ``num_samples`` posterior draws per row: the weighted mean of
    E[x|z] (a category's most probable level, a binary column's more probable value, a count rounded). With
    ``draws=M``, M imputations drawn by their weights, one after another.

    A DataFrame is read with the model's schema (``vae.schema``) and comes back as one: the same columns and order,
    the dtypes of its values (integers and booleans, where gaps made a column float or object), its observed cells
    untouched, and with ``draws`` an ``imputation`` column (1 ... M) first. An encoded
    tensor (NaN where a cell is missing) comes back as one, ``(N, C)`` or ``(M, N, C)``. Errors name ``name``.
    """
    for setting, value in (("num_samples", num_samples), ("draws", draws)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{setting} must be a positive integer, got {value!r}")
    if not is_frame(table):
        return _impute_encoded(vae, table, num_samples, draws, progress, name)
    if vae.schema is None:
        raise ValueError("the model has no table schema to read a DataFrame with; fit it on a DataFrame or a "
                         "table file, or load its run with pyrovae.load_run")
    if draws is not None and IMPUTATION in table.columns:
        raise ValueError(f"{name} has a column named {IMPUTATION!r}, the name multiple imputations are numbered "
                         f"by; rename it")
    filled = _impute_encoded(vae, vae.schema.encode(table, name), num_samples, draws, progress, name)
    if draws is None:
        return _filled_frame(table, vae.schema.decode(filled))
    import pandas as pd

    frames = [_filled_frame(table, vae.schema.decode(each)).assign(**{IMPUTATION: m})[[IMPUTATION, *table.columns]]
              for m, each in enumerate(filled, start=1)]
    return pd.concat(frames, ignore_index=True)


def _filled_frame(table: pd.DataFrame, imputed: pd.DataFrame) -> pd.DataFrame:
    """``table`` with each missing cell taken from ``imputed`` (the same rows, decoded), each column in the dtype of
    its values (``imputed``'s): whole numbers and booleans that only the gaps made float or object are so again."""
    filled = table.copy()
    for name in table.columns:
        column, dtype = table[name], imputed[name].dtype
        filled[name] = column.where(column.notna(), imputed[name].to_numpy()).astype(dtype)
    return filled


@torch.no_grad()
def _impute_encoded(vae: TableVAE, x: torch.Tensor, num_samples: int, draws: int | None, progress: bool,
                    name: str) -> torch.Tensor:
    """The encoded table ``x`` imputed, ``(N, C)``, or ``(draws, N, C)``."""
    vae.check_data(x, name)
    with evaluating(vae), tqdm(total=len(x), unit="row", desc=f"imputing, K={num_samples}", disable=not progress,
                               dynamic_ncols=True) as bar:
        sampler, parts = vae_sampler(vae, x), []
        for start in range(0, len(x), ROWS_AT_ONCE):
            parts.append(_impute_rows(vae, sampler, slice(start, start + ROWS_AT_ONCE), num_samples, draws))
            bar.update(len(x[start:start + ROWS_AT_ONCE]))
    x = x.to(vae.device)
    return torch.where(x.isnan(), torch.cat(parts, dim=-2), x).cpu()


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
