"""A VAE for tables: a likelihood per column type, missing cells masked out of it.

A row of an encoded table ``x`` (a float per column, NaN where a cell is missing; see ``pyrovae.data.tables``) is
observed by one Pyro site per column type present, each its own family: ``real`` Normal, ``positive`` LogNormal,
``count`` Poisson, ``binary`` Bernoulli, ``categorical`` Categorical. Each site is masked where ``x`` is NaN, so a
missing cell adds exactly nothing: the model scores p(x_obs | z), and the importance sampler estimates
log p(x_obs). The encoder reads the observed values, missing cells set to zero, and the mask (Mattei & Frellsen
2019, MIWAE); ``--elbo iwae`` on incomplete rows is then MIWAE's bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from pyrovae.model.checks import check_images
from pyrovae.model.columns import Levels, TableLikelihood, column_groups, parse_column
from pyrovae.model.nets import MLPEncoder
from pyrovae.model.priors import VampPrior
from pyrovae.model.vae import VAE, data_plate

FILL = {"real": 0.0, "positive": 1.0, "count": 0.0, "binary": 0.0, "categorical": 0.0}
"""A value in each type's support that stands in for a missing cell, so that its masked-out log density (and its
gradient) stays finite."""
ENCODED = {"real": torch.clone, "positive": torch.log, "count": torch.log1p, "binary": torch.clone}
"""How the encoder reads an observed cell of each type but categorical (which it reads one-hot)."""
SUPPORT = {"real": "finite numbers", "positive": "finite numbers above 0", "count": "whole numbers, 0 or more",
           "binary": "0 or 1", "categorical": "level indices, 0 to {last}"}
"""The values of a column of each type, as the encoded table holds them."""


class TableInputs(nn.Module):
    """What the encoder reads of a row: the observed cells (real and binary as they are, positive as log x, count as
    log(1 + x), categorical one-hot), zero where missing, then the mask, 1 where observed (MIWAE's choice)."""

    def __init__(self, columns: Sequence[str]):
        super().__init__()
        self.groups = column_groups(columns)
        self.levels = Levels([parse_column(columns[j])[1] for j in self.groups.get("categorical", [])])
        self.size = len(columns) + sum(len(self.groups.get(kind, [])) for kind in ENCODED) + sum(self.levels.counts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        observed = ~x.isnan()
        parts = []
        for kind, group in self.groups.items():
            cells, seen = x[..., group].nan_to_num(FILL[kind]), observed[..., group]
            if kind == "categorical":
                parts.append(self.levels.one_hot(cells, seen).to(x.dtype))
            else:
                parts.append(torch.where(seen, ENCODED[kind](cells), 0.0))
        return torch.cat([*parts, observed.to(x.dtype)], dim=-1)


def table_encoder(columns: Sequence[str], z_dim: int, hidden: Sequence[int] = (400,), activation: str = "relu",
                  context_dim: int = 0) -> nn.Sequential:
    """q(z|x) parameters of a table's rows: an :class:`~pyrovae.model.nets.MLPEncoder` over :class:`TableInputs`."""
    inputs = TableInputs(columns)
    return nn.Sequential(inputs, MLPEncoder(inputs.size, z_dim, hidden, activation, context_dim=context_dim))


class TableVAE(VAE):
    """A :class:`~pyrovae.model.vae.VAE` of an encoded table: p(z) prod_types p(x_type,obs | z), q(z | x_obs, mask).

    ``likelihood`` is the :class:`TableLikelihood` of the columns, which the decoder's outputs parametrize. Every
    prior but the VampPrior and every guide apply; labels (conditional models) do not, for now. ``schema`` is how the
    table it learned reads and writes its columns (a :class:`pyrovae.data.tables.TableSchema`, which ``fit`` and
    ``load_run`` set), so that its imputations and samples come back in the table's names, units and levels.
    """

    schema: Any = None

    def __init__(self, encoder: nn.Module, decoder: nn.Module, z_dim: int, likelihood: TableLikelihood, **parts):
        super().__init__(encoder, decoder, z_dim, len(likelihood.columns), likelihood=likelihood, **parts)
        if self.conditional or self.classifier is not None:
            raise ValueError("a table model reads no labels for now; build it without prior='class-means', "
                             "decoder_conditioning and a classifier")
        if isinstance(self.prior, VampPrior):
            raise ValueError("the vamp prior's pseudo-inputs are images, not table rows; choose prior='standard' or "
                             "prior='mixture'")

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns' specs, ``"real"`` ... ``"categorical:L"``, in the table's order."""
        return self.likelihood.columns

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None, *,
              kl_weight: float | torch.Tensor = 1.0, data_size: int | None = None) -> None:
        """p(z) p(x_obs|z): a site ``x_<type>`` per column type, masked where ``x`` is NaN."""
        pyro.module("decoder", self.decoder)
        pyro.module("prior", self.prior)
        pyro.module("likelihood", self.likelihood)
        with data_plate(x, data_size):
            with poutine.scale(scale=kl_weight):
                z = pyro.sample("z", self.prior(y))
            for kind, cells in self.likelihood(self.decoder(z)).items():
                values = x[..., self.likelihood.groups[kind]]
                pyro.sample(f"x_{kind}", cells.mask(~values.isnan()).to_event(1), obs=values.nan_to_num(FILL[kind]))

    def column_distributions(self, z: torch.Tensor) -> list[dist.TorchDistribution]:
        """p(x_j|z) for every column j, each of batch shape ``z.shape[:-1]`` (what imputation weighs and draws)."""
        return self.likelihood.column_distributions(self.decoder(z))

    @torch.no_grad()
    def sample_rows(self, n: int) -> torch.Tensor:
        """``n`` rows drawn from the model, x ~ p(x|z), z ~ p(z): levels, counts and 0/1 as floats, ``(n, C)``."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n counts the rows and must be a whole number, 0 or more, got {n!r}")
        z = self.prior().sample((n,))
        return torch.stack([column.sample().to(z.dtype) for column in self.column_distributions(z)], dim=-1)

    def check_data(self, x: torch.Tensor, name: str = "data") -> None:
        """Raise ``ValueError`` unless ``x`` is an encoded table for these columns: NaN where a cell is missing,
        every row with a cell observed, and every observed cell finite and in its column type's support."""
        if torch.is_tensor(x) and x.is_floating_point():
            check_images(x.nan_to_num(0.0, 0.0, 0.0), self.x_dim, name)  # its type, shape and rows
        else:
            check_images(x, self.x_dim, name)
        empty = x.isnan().all(-1).nonzero()
        if len(empty):
            raise ValueError(f"{name} row {empty[0].item()} has every cell missing; drop such rows, they carry "
                             f"nothing to learn from")
        for j, spec in enumerate(self.columns):
            cells = x[:, j][~x[:, j].isnan()]
            bad = cells[~in_support(spec, cells)]
            if len(bad):
                kind, levels = parse_column(spec)
                raise ValueError(f"{name} column {j} ({spec}) holds {bad[0].item():g}, but a {kind} column holds "
                                 f"{SUPPORT[kind].format(last=levels - 1)}; "
                                 f"encode the table with its schema (pyrovae.data.tables), or mark the cell "
                                 f"missing (NaN)")


def in_support(spec: str, cells: torch.Tensor) -> torch.Tensor:
    """Whether each of ``cells`` is a value of a column of type ``spec`` (see :data:`SUPPORT`)."""
    kind, levels = parse_column(spec)
    finite = cells.isfinite()
    if kind == "real":
        return finite
    if kind == "positive":
        return finite & (cells > 0)
    whole = finite & (cells == cells.round()) & (cells >= 0)
    return whole if kind == "count" else whole & (cells < levels)
