"""One SVI step: the minibatch objective as a module, the plan of an epoch's batches, and the optimizer step."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Protocol

import pyro
import torch
from pyro.infer.util import is_validation_enabled
from torch import nn

from pyrovae.data.datasets import Dataset, Split, as_floats
from pyrovae.data.label_mix import LabelMix
from pyrovae.distributed import SINGLE, Processes, all_reduce_sum, data_parallel, shard
from pyrovae.inference.evaluate import negative_elbo
from pyrovae.inference.objectives import ELBOParts
from pyrovae.inference.semi_supervised import (
    KINGMA_AUX_WEIGHT,
    SemiSupervisedLoss,
    learns_from_few_labels,
)
from pyrovae.model.priors import ClassMeansPrior
from pyrovae.model.vae import VAE
from pyrovae.training.config import ELBOS, TrainConfig


class ELBOLoss(nn.Module):
    """The VAE's minibatch objective as a module (like Pyro's ``ELBOModule``), so DDP can wrap it; its
    ``forward(x, y, kl_weight=w)`` returns the loss and its :class:`ELBOParts` summed over the minibatch (detached,
    without the dataset scaling)."""

    Parts = ELBOParts

    def __init__(self, vae: VAE, elbo: pyro.infer.ELBO, data_size: int | None = None):
        super().__init__()
        self.vae, self.elbo, self.data_size = vae, elbo, data_size

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, *,
                kl_weight: float | torch.Tensor = 1.0) -> tuple[torch.Tensor, ELBOParts]:
        parts = self.elbo.loss_and_parts(self.vae.model, self.vae.guide, x, y, kl_weight=kl_weight,
                                         data_size=self.data_size)
        plate_scale = 1.0 if self.data_size is None else self.data_size / len(x)
        return parts.loss, parts._replace(loss=parts.loss.detach() / plate_scale)

    def epoch_metrics(self, totals: torch.Tensor) -> dict[str, float]:
        """Per-example means of the loss, reconstruction and KL from an epoch's summed parts and examples seen."""
        loss, recon, kl = (totals[:3] / max(totals[3].item(), 1)).tolist()
        return {"train_loss": loss, "recon": recon, "kl": kl}

    @staticmethod
    def summary(metrics: dict[str, float]) -> str:
        """The epoch's terms, as the progress line shows them."""
        return f"recon {metrics['recon']:.2f}, KL {metrics['kl']:.2f}"

    def validation_loss(self, val: Split, processes: Processes = SINGLE) -> float:
        """The negative ELBO per image of ``val``, each process scoring every world_size-th image."""
        mine = slice(processes.rank, None, processes.world_size)
        total = negative_elbo(self.vae, as_floats(val.x[mine]), val.y[mine]).sum().reshape(1)
        return all_reduce_sum(total, processes).item() / len(val)


class SVIStep:
    """One optimizer step on a minibatch's (KL-weighted) negative ELBO: ``step(x, y, kl_weight=w)``.

    ``objective`` replaces the :class:`ELBOLoss`. Returns the objective's detached parts and a 0-dim flag: were the
    loss and every gradient finite? With ``skip_nonfinite`` a non-finite step changes nothing (reading the flag syncs
    the device); ``clip_norm`` clips the gradients' total norm. Pyro checks model and guide on the first step only."""

    def __init__(self, vae: VAE, optimizer: torch.optim.Optimizer, elbo: pyro.infer.ELBO,
                 skip_nonfinite: bool = False, processes: Processes = SINGLE, data_size: int | None = None,
                 objective: nn.Module | None = None, clip_norm: float | None = None):
        self.vae, self.optimizer = vae, optimizer
        self.skip_nonfinite, self.clip_norm = skip_nonfinite, clip_norm
        self.parameters = [p for group in optimizer.param_groups for p in group["params"]]
        self.objective = objective if objective is not None else ELBOLoss(vae, elbo, data_size)
        self.loss = data_parallel(self.objective) if processes.parallel else self.objective
        self.checked = False

    def __call__(self, *batch: torch.Tensor | None,
                 kl_weight: float | torch.Tensor = 1.0) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        with pyro.validation_enabled(is_validation_enabled() and not self.checked):
            loss, parts = self.loss(*batch, kl_weight=kl_weight)
        self.checked = True
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # finite exactly when the loss and every gradient entry are (barring overflow); cheaper than a norm
        sums = [loss.detach(), *(p.grad.sum() for p in self.parameters if p.grad is not None)]
        finite = torch.isfinite(torch.stack(sums).sum())
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.clip_norm)
        if not (self.skip_nonfinite and not finite):
            self.optimizer.step()
        return parts, finite


class BatchPlan(Protocol):
    """How an epoch's minibatches are drawn: its steps, its shuffled order, and the batches of that order."""

    steps: int
    clusters: bool  # whether the class means are learned without any label (and placed by k-means after epoch 1)

    def epoch_order(self, generator: torch.Generator) -> torch.Tensor: ...

    def batches(self, order: torch.Tensor, first: int = 0) -> Iterator[tuple[torch.Tensor, ...]]: ...

    def examples(self, batch: tuple[torch.Tensor, ...]) -> int: ...


class ShuffledBatches:
    """Every label known: ``(x, y)`` minibatches of a shuffled epoch, this process's share of it."""

    clusters = False

    def __init__(self, data: Dataset, batch_size: int, processes: Processes = SINGLE):
        self.data, self.batch_size, self.processes = data, batch_size, processes
        self.steps = math.ceil(math.ceil(len(data.train) / processes.world_size) / batch_size)

    def epoch_order(self, generator: torch.Generator) -> torch.Tensor:
        return shard(self.data.shuffled_order(generator), self.processes)

    def batches(self, order: torch.Tensor, first: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        return self.data.batches(self.batch_size, order=order, first=first)

    def examples(self, batch: tuple[torch.Tensor, ...]) -> int:
        return len(batch[0])


class MixedBatches:
    """Hidden labels: ``(x_labeled, y_labeled, x_unlabeled)`` minibatches (see :class:`LabelMix`)."""

    def __init__(self, data: Dataset, mix: LabelMix, clusters: bool):
        self.data, self.mix, self.clusters = data, mix, clusters
        self.steps = mix.steps

    def epoch_order(self, generator: torch.Generator) -> torch.Tensor:
        return self.mix.epoch_order(generator)

    def batches(self, order: torch.Tensor, first: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        return self.mix.batches(self.data, order, first=first)

    def examples(self, batch: tuple[torch.Tensor, ...]) -> int:
        return len(batch[0]) + len(batch[2])


def training_objective(vae: VAE, data: Dataset, config: TrainConfig, batch_size: int,
                       processes: Processes = SINGLE) -> tuple[ELBOLoss | SemiSupervisedLoss, BatchPlan]:
    """The minibatch objective that trains ``vae`` on ``data`` and the plan of its batches: with hidden labels the
    semi-supervised objective over mixed batches, else the negative ELBO of ``config.elbo`` over shuffled ones."""
    name = "trace" if config.elbo == "meanfield" and not vae.closed_form_kl else config.elbo  # see fit's note
    options = {"estimator": config.estimator} if name == "iwae" else {}
    elbo = ELBOS[name](num_particles=config.particles, vectorize_particles=config.particles > 1,
                       max_plate_nesting=1, **options)  # the data plate; particles go left of it
    if not learns_from_few_labels(vae, data):
        return ELBOLoss(vae, elbo, len(data.train)), ShuffledBatches(data, batch_size, processes)
    mix = LabelMix.of(data.train, batch_size, config.labeled_fraction)
    aux_weight = KINGMA_AUX_WEIGHT * len(data.train) if config.aux_weight is None else config.aux_weight
    objective = SemiSupervisedLoss(vae, elbo, len(mix.labeled), len(mix.unlabeled), aux_weight, config.particles)
    clusters = not len(mix.labeled) and isinstance(vae.prior, ClassMeansPrior)
    return objective, MixedBatches(data, mix, clusters)
