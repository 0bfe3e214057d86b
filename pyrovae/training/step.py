"""One SVI step: the minibatch objective as a module, and the optimizer step on it."""


from __future__ import annotations

from collections.abc import Iterator

import pyro
import torch
from pyro.infer.util import is_validation_enabled
from torch import nn

from pyrovae.data.datasets import Dataset
from pyrovae.data.label_mix import LabelMix
from pyrovae.distributed import SINGLE, Processes, data_parallel
from pyrovae.inference.objectives import ELBOParts
from pyrovae.inference.semi_supervised import (
    KINGMA_AUX_WEIGHT,
    SemiSupervisedLoss,
    learns_from_few_labels,
)
from pyrovae.model.vae import VAE
from pyrovae.training.config import ELBOS, TrainConfig


class ELBOLoss(nn.Module):
    """The VAE's minibatch objective as a module (like Pyro's ``ELBOModule``), so DDP can wrap it.

    ``forward(x, y, kl_weight=w)`` runs ``elbo`` on the VAE's model and guide, called with
    those arguments and ``data_size``, and returns the loss to minimize and its
    :class:`~pyrovae.inference.objectives.ELBOParts` summed over the minibatch (detached; the loss
    without the data plate's dataset scaling). DDP then all-reduces the gradients.
    """

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
        """Per-example means of the loss and its reconstruction and KL terms from an epoch's summed parts
        and, last, the examples seen."""
        loss, recon, kl = (totals[:3] / max(totals[3].item(), 1)).tolist()
        return {"train_loss": loss, "recon": recon, "kl": kl}


class SVIStep:
    """One optimizer step on a minibatch's (KL-weighted) negative ELBO.

    ``data_size``, the number of training examples, is passed to the model and guide with
    every step (the data plate scales the minibatch to the dataset), the KL weight with
    each call: ``step(x, y, kl_weight=w)``. ``objective`` replaces that :class:`ELBOLoss`
    by another objective module called with the minibatch (the semi-supervised one of
    :mod:`pyrovae.inference.semi_supervised` takes ``(x_labeled, y_labeled, x_unlabeled)``). Returns
    the objective's detached parts, each summed over the minibatch, and a 0-dim flag: were
    the loss and every gradient finite? With ``skip_nonfinite`` the flag is read before the
    update (a device sync per step) and a non-finite step changes neither parameters nor
    optimizer state; otherwise the update always happens and the flag stays on the device.
    Under torchrun (``processes``) the objective runs inside DDP, which all-reduces the
    gradients. Pyro checks the model and guide (shapes, supports, plate structure) on the
    first step; the structure is static, so later steps skip those checks.
    """

    def __init__(self, vae: VAE, optimizer: torch.optim.Optimizer, elbo: pyro.infer.ELBO,
                 skip_nonfinite: bool = False, processes: Processes = SINGLE, data_size: int | None = None,
                 objective: nn.Module | None = None):
        self.vae, self.optimizer = vae, optimizer
        self.skip_nonfinite = skip_nonfinite
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
        # The sum of the loss and every gradient entry is finite exactly when they all are (short of
        # the sum overflowing past 3e38); cheaper than a norm.
        sums = [loss.detach(), *(p.grad.sum() for p in self.parameters if p.grad is not None)]
        finite = torch.isfinite(torch.stack(sums).sum())
        if not (self.skip_nonfinite and not finite):
            self.optimizer.step()
        return parts, finite


def training_objective(vae: VAE, data: Dataset, config: TrainConfig,
                       batch_size: int) -> tuple[ELBOLoss | SemiSupervisedLoss, LabelMix | None]:
    """The minibatch objective that trains ``vae`` on ``data``, and how its batches mix labels (``None``: they
    do not, every label is known).

    With hidden labels it is the semi-supervised objective over batches of ``batch_size``
    mixed images; otherwise the (KL-weighted) negative ELBO that ``config.elbo`` names.
    """
    name = "trace" if config.elbo == "meanfield" and not vae.closed_form_kl else config.elbo  # see fit's note
    options = {"estimator": config.estimator} if name == "iwae" else {}
    elbo = ELBOS[name](num_particles=config.particles, vectorize_particles=config.particles > 1,
                       max_plate_nesting=1, **options)  # the data plate; particles go left of it
    if not learns_from_few_labels(vae, data):
        return ELBOLoss(vae, elbo, len(data.train)), None
    mix = LabelMix.of(data.train, batch_size, config.labeled_fraction)
    aux_weight = KINGMA_AUX_WEIGHT * len(data.train) if config.aux_weight is None else config.aux_weight
    return SemiSupervisedLoss(vae, elbo, len(mix.labeled), len(mix.unlabeled), aux_weight, config.particles), mix


def epoch_batches(data: Dataset, mix: LabelMix | None, batch_size: int, order: torch.Tensor,
                  first: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
    """The minibatches of the epoch ``order`` from step ``first``: ``(x, y)``, or ``(x_labeled, y_labeled,
    x_unlabeled)`` when ``mix`` mixes labelled and unlabelled images."""
    if mix is None:
        return data.batches(batch_size, order=order, first=first)
    return mix.batches(data, order, first=first)
