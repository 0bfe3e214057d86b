"""Learning from few labels: the semi-supervised objective, and k-means class means for clustering.

With labelled images (x, y) and unlabelled images x, the conditional VAE maximizes (Kingma et al. 2014, eq. 9)

    sum_(x,y) ELBO(x, y) + sum_x ELBO(x) - aux_weight * sum_(x,y) [-log q(y|x)],

ELBO(x) bounding log p(x) = log sum_y pi_y p(x|y), the label summed out exactly by ``TraceEnum_ELBO``.
The last term trains the M2 guide's classifier q(y|x) on the labels too (aux_weight by default 0.1 N).
Hidden labels are -1, as in scikit-learn's semi-supervised estimators.
"""

from __future__ import annotations

from typing import NamedTuple

import pyro.distributions as dist
import torch
from pyro.infer import ELBO, TraceEnum_ELBO
from torch import nn

from pyrovae.data.datasets import HIDDEN, Dataset, Split, as_floats
from pyrovae.distributed import SINGLE, Processes
from pyrovae.inference.evaluate import evaluating
from pyrovae.model.priors import ClassMeansPrior
from pyrovae.model.vae import VAE

KINGMA_AUX_WEIGHT = 0.1
"""Kingma et al. (2014) weigh the classification term by 0.1 x the number of training images."""


def learns_from_few_labels(vae: VAE, data: Dataset) -> bool:
    """Whether ``vae`` reads labels and some of the training labels are hidden."""
    return vae.conditional and bool((data.train.y == HIDDEN).any())


def place_class_means(vae: VAE, x: torch.Tensor, seed: int, batch_size: int = 4096) -> None:
    """Set the class means mu_y of ``vae``'s prior to k-means centroids of the posterior means of ``x``.

    After a first epoch the encoder already groups similar images, so the centroids put one mean on each
    group, as VaDE (Jiang et al. 2017) starts its mixture.
    """
    from sklearn.cluster import KMeans  # imported when clustering starts: scikit-learn is slow to import

    if not isinstance(vae.prior, ClassMeansPrior):
        raise ValueError(f"place_class_means sets the means of the class-means prior, not of "
                         f"{type(vae.prior).__name__}")
    with evaluating(vae):
        loc = torch.cat([vae.encode(as_floats(chunk))[0] for chunk in x.split(batch_size)])
    kmeans = KMeans(vae.prior.num_classes, n_init=10, random_state=seed).fit(loc.cpu().numpy())
    with torch.no_grad():
        vae.prior.means.copy_(torch.as_tensor(kmeans.cluster_centers_))


class SemiSupervisedParts(NamedTuple):
    """A mixed minibatch's terms, each summed over its images (detached), and the images counted."""

    labeled: torch.Tensor
    """-ELBO(x, y) summed over the labelled images."""
    unlabeled: torch.Tensor
    """-ELBO(x), y summed out, over the unlabelled images."""
    aux: torch.Tensor
    """-log q(y|x) summed over the labelled images (0 without a classifier)."""
    num_labeled: torch.Tensor
    num_unlabeled: torch.Tensor


class SemiSupervisedLoss(nn.Module):
    """The semi-supervised objective of a minibatch as a module, scaled to the whole training set.

    ``forward`` returns the loss ``(N_l / B_l) sum [-ELBO(x, y) - aux_weight log q(y|x)] + (N_u / B_u) sum -ELBO(x)``
    and its :class:`SemiSupervisedParts`; ``elbo`` scores the labelled images, ``TraceEnum_ELBO`` the others.
    """

    Parts = SemiSupervisedParts

    def __init__(self, vae: VAE, elbo: ELBO, num_labeled: int, num_unlabeled: int, aux_weight: float,
                 num_particles: int = 1):
        super().__init__()
        self.vae, self.elbo = vae, elbo
        self.enumerated = TraceEnum_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1,
                                         max_plate_nesting=1)
        self.num_labeled, self.num_unlabeled = num_labeled, num_unlabeled
        self.aux_weight = aux_weight if vae.classifier is not None else 0.0

    def forward(self, x_labeled: torch.Tensor, y_labeled: torch.Tensor, x_unlabeled: torch.Tensor, *,
                kl_weight: float | torch.Tensor = 1.0) -> tuple[torch.Tensor, SemiSupervisedParts]:
        zero = x_unlabeled.new_zeros(())
        loss_labeled = aux = zero
        if len(x_labeled):
            loss_labeled = self.elbo.loss_and_parts(self.vae.model, self.vae.guide, x_labeled, y_labeled,
                                                    kl_weight=kl_weight, data_size=self.num_labeled).loss
            if self.vae.classifier is not None:
                aux = -dist.Categorical(logits=self.vae.classifier(x_labeled)).log_prob(y_labeled).sum()
        loss_unlabeled = self.enumerated.differentiable_loss(self.vae.model, self.vae.guide, x_unlabeled,
                                                             kl_weight=kl_weight, data_size=self.num_unlabeled)
        labeled_scale = self.num_labeled / max(len(x_labeled), 1)
        loss = loss_labeled + loss_unlabeled + self.aux_weight * labeled_scale * aux
        unlabeled_scale = self.num_unlabeled / len(x_unlabeled)
        parts = SemiSupervisedParts(loss_labeled.detach() / labeled_scale, loss_unlabeled.detach() / unlabeled_scale,
                                    aux.detach(), zero + len(x_labeled), zero + len(x_unlabeled))
        return loss, parts

    @torch.no_grad()
    def validation_loss(self, val: Split, processes: Processes = SINGLE) -> float:
        """The negative ELBO per image of ``val`` with its labels hidden too: log p(x), y summed out, as the
        unlabelled training images are scored (one process only)."""
        with evaluating(self.vae):
            return self.unlabeled_loss(as_floats(val.x)) / len(val)

    @staticmethod
    def summary(metrics: dict[str, float]) -> str:
        """The epoch's terms, as the progress line shows them."""
        return ", ".join(f"{name} {metrics[key]:.2f}" for key, name in (
            ("loss_labeled", "labelled"), ("loss_unlabeled", "unlabelled"), ("loss_aux", "-log q(y|x)"))
            if key in metrics)

    @torch.no_grad()
    def unlabeled_loss(self, x: torch.Tensor, batch_size: int = 500) -> float:
        """-ELBO(x), y summed out, summed over the images ``x`` (taken ``batch_size`` at a time)."""
        return sum(self.enumerated.loss(self.vae.model, self.vae.guide, x[i:i + batch_size])
                   for i in range(0, len(x), batch_size))

    def epoch_metrics(self, totals: torch.Tensor) -> dict[str, float]:
        """Per-image means of the summed :class:`SemiSupervisedParts` of an epoch, and ``train_loss``, the objective
        per training image, (N_l (loss_labeled + aux_weight loss_aux) + N_u loss_unlabeled) / N."""
        labeled, unlabeled, aux, seen_labeled, seen_unlabeled = totals[:5].tolist()
        row = {"loss_unlabeled": unlabeled / seen_unlabeled}
        if seen_labeled:  # none with labeled=0
            row["loss_labeled"] = labeled / seen_labeled
            if self.vae.classifier is not None:
                row["loss_aux"] = aux / seen_labeled
        total = (self.num_labeled * (row.get("loss_labeled", 0.0) + self.aux_weight * row.get("loss_aux", 0.0))
                 + self.num_unlabeled * row["loss_unlabeled"])
        return {"train_loss": total / (self.num_labeled + self.num_unlabeled), **row}
