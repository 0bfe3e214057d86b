"""The columns of a table as the model sees them: their type specs and p(x|z), a distribution per column type.

A spec names a column's type: ``real`` (Normal), ``positive`` (LogNormal), ``count`` (Poisson), ``binary``
(Bernoulli) or ``categorical:L`` (Categorical over L levels). The decoder's outputs parametrize them all.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyrovae.model.likelihoods import LocationScaleLikelihood
from pyrovae.settings import COLUMN_TYPES


def parse_column(spec: str) -> tuple[str, int]:
    """``(type, levels)`` of a column spec: ``"real"``, ``"positive"``, ``"count"``, ``"binary"`` (2 levels) or
    ``"categorical:L"`` (L >= 2 levels); the levels of the others are 0."""
    kind, colon, levels = spec.partition(":") if isinstance(spec, str) else (spec, "", "")
    if kind == "categorical" and levels.isdigit() and int(levels) >= 2:
        return kind, int(levels)
    if kind in COLUMN_TYPES and kind != "categorical" and not colon:
        return kind, 2 if kind == "binary" else 0
    raise ValueError(f"unknown column spec {spec!r}; write one of real, positive, count, binary or categorical:L "
                     f"(L >= 2 levels)")


def column_groups(columns: Sequence[str]) -> dict[str, list[int]]:
    """The indices of the columns of each type present, the types in :data:`COLUMN_TYPES` order."""
    types = [parse_column(spec)[0] for spec in columns]
    return {kind: [j for j, t in enumerate(types) if t == kind] for kind in COLUMN_TYPES if kind in types}


class Levels(nn.Module):
    """The categorical columns' levels, padded to the most levels L of any: where each column's L_j logits lie in
    the decoder's block of categorical logits, and which of the L places are levels."""

    def __init__(self, counts: Sequence[int]):
        super().__init__()
        most, starts = max(counts, default=0), [sum(counts[:j]) for j in range(len(counts))]
        index = [[start + min(level, count - 1) for level in range(most)] for start, count in zip(starts, counts)]
        valid = [[level < count for level in range(most)] for count in counts]
        self.register_buffer("index", torch.tensor(index, dtype=torch.long).reshape(len(counts), most),
                             persistent=False)
        self.register_buffer("valid", torch.tensor(valid, dtype=torch.bool).reshape(len(counts), most),
                             persistent=False)
        self.counts = tuple(counts)

    def pad(self, logits: torch.Tensor) -> torch.Tensor:
        """``(..., sum L_j)`` logits as ``(..., columns, L)``, the places beyond a column's levels of no mass."""
        return logits[..., self.index].masked_fill(~self.valid, torch.finfo(logits.dtype).min)

    def one_hot(self, levels: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """``(..., columns)`` level indices as ``(..., sum L_j)`` one-hot vectors, one after another, all zero where
        not ``observed``."""
        return (F.one_hot(levels.long(), self.valid.shape[-1]) * observed[..., None])[..., self.valid]


def family(kind: str, *parameters: torch.Tensor) -> dist.TorchDistribution:
    """The distribution of cells of type ``kind`` from its parameters (loc and scale, rate, or logits)."""
    if kind in ("binary", "categorical"):
        return (dist.Bernoulli if kind == "binary" else dist.Categorical)(logits=parameters[0], validate_args=False)
    families = {"real": dist.Normal, "positive": dist.LogNormal, "count": dist.Poisson}
    return families[kind](*parameters, validate_args=False)


class TableLikelihood(nn.Module):
    """p(x|z) of a table, from the decoder's outputs: a distribution per column type over its columns.

    The decoder emits, type by type: real locs (then raw scales, with ``learn_scale="decoder"``), positive columns'
    log-locs (and raw scales), count log-rates, binary logits, and each categorical column's L logits. The scales of
    real and positive columns are fixed (``learn_scale=None``), learned per column (``"pixel"``) or predicted by the
    decoder (``"decoder"``), as ``learn_scale`` says for the Gaussian likelihood of images.
    """

    def __init__(self, columns: Sequence[str], scale: float = 1.0, learn_scale: str | None = "pixel"):
        super().__init__()
        self.columns = tuple(columns)
        self.groups = column_groups(self.columns)
        self.levels = Levels([parse_column(self.columns[j])[1] for j in self.groups.get("categorical", [])])
        self.scales = nn.ModuleDict({kind: LocationScaleLikelihood(scale, learn_scale, len(self.groups[kind]))
                                     for kind in ("real", "positive") if kind in self.groups})
        self.widths = {kind: sum(self.levels.counts) if kind == "categorical" else
                       len(group) * (self.scales[kind].params_per_pixel if kind in self.scales else 1)
                       for kind, group in self.groups.items()}
        self.num_params = sum(self.widths.values())
        self.register_buffer("offsets", torch.zeros(self.num_params))  # added to the decoder's outputs: start_at
        # where each column lies: its type, its place among that type's columns, its levels
        place = {j: (kind, p) for kind, group in self.groups.items() for p, j in enumerate(group)}
        self.places = [(*place[j], parse_column(spec)[1]) for j, spec in enumerate(self.columns)]

    @torch.no_grad()
    def start_at(self, x: torch.Tensor) -> None:
        """Centre the untrained decoder's outputs (near 0) on the encoded table ``x`` (NaN where missing): offsets
        that put each positive column's log-location at the mean log of its observed cells and each count column's
        log-rate at the log of their mean. Reals are standardized and need none; unscaled positives and counts (in
        the thousands, say) would otherwise have to climb there by gradient steps. The offsets stay fixed."""
        starts = dict(zip(self.widths, torch.tensor([0, *self.widths.values()]).cumsum(0).tolist()))
        for kind in ("positive", "count"):
            if kind not in self.groups:
                continue
            cells = x[:, self.groups[kind]].double()
            observed = (~cells.isnan()).sum(0).clamp(min=1)
            if kind == "positive":
                offset = cells.log().nan_to_num(0.0).sum(0) / observed  # mean log x
            else:
                offset = (cells.nan_to_num(0.0).sum(0) / observed).clamp(min=1e-3).log()  # log mean x
            self.offsets[starts[kind]:starts[kind] + len(self.groups[kind])] = offset.to(self.offsets.dtype)

    def cell_parameters(self, params: torch.Tensor) -> dict[str, tuple[torch.Tensor, ...]]:
        """Each type's parameters from the decoder's outputs (plus :meth:`start_at`'s offsets), ``(loc, scale)``,
        ``(rate,)`` or ``(logits,)``, its columns last (categorical: then the padded levels)."""
        parameters = {}
        params = params + self.offsets
        for kind, block in zip(self.widths, params.split(list(self.widths.values()), dim=-1)):
            if kind in self.scales:
                loc, scale = self.scales[kind].loc_and_scale(block)
                parameters[kind] = loc, scale.expand_as(loc)
            elif kind == "count":
                parameters[kind] = (block.exp(),)  # from log-rates
            elif kind == "categorical":
                parameters[kind] = (self.levels.pad(block),)
            else:
                parameters[kind] = (block,)  # binary logits
        return parameters

    def forward(self, params: torch.Tensor) -> dict[str, dist.TorchDistribution]:
        """Each type's distribution, batch shape ``(..., N, columns of the type)``."""
        return {kind: family(kind, *parameters) for kind, parameters in self.cell_parameters(params).items()}

    def column_distributions(self, params: torch.Tensor) -> list[dist.TorchDistribution]:
        """One distribution per column, in the table's order, batch shape ``(..., N)``."""
        parameters = self.cell_parameters(params)
        return [family(kind, *(value[..., p, :levels] if kind == "categorical" else value[..., p]
                               for value in parameters[kind]))
                for kind, p, levels in self.places]

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[x|z] of every column, ``(..., N, C)``: a categorical column's most probable level instead."""
        mean = params.new_empty(*params.shape[:-1], len(self.columns))
        for kind, cells in self(params).items():
            most_probable = kind == "categorical"
            mean[..., self.groups[kind]] = cells.logits.argmax(-1).to(mean.dtype) if most_probable else cells.mean
        return mean
