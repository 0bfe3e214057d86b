"""Minibatches that mix a few labelled training images into every step, the rest unlabelled."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import torch

from pyrovae.data.datasets import HIDDEN, Dataset, Split, as_floats, binarize_afresh
from pyrovae.settings import SettingError

LABELED_PASSES = 60
"""Passes over the labelled images per epoch that the default labelled share of a batch aims at."""
LABELED_FRACTION_RANGE = (0.1, 0.5)
"""The least and the most default labelled share of a batch."""


def visible_labels(split: Split) -> torch.Tensor:
    """The labels of ``split`` that are not hidden."""
    return split.y[split.y != HIDDEN]


def default_labeled_fraction(num_labeled: int, num_unlabeled: int) -> float:
    """The labelled share of a batch that cycles the labelled images :data:`LABELED_PASSES` times an epoch,
    within :data:`LABELED_FRACTION_RANGE`: P passes need B_l / (B_l + B_u) = P N_l / (N_u + P N_l).

    The cap bounds an epoch's steps when labels are many; the floor keeps few labels from being cycled so often
    that q(y|x) overfits them.
    """
    least, most = LABELED_FRACTION_RANGE
    share = LABELED_PASSES * num_labeled / (num_unlabeled + LABELED_PASSES * num_labeled)
    return min(most, max(least, share))


@dataclasses.dataclass
class LabelMix:
    """How every minibatch mixes labelled and unlabelled training images: an epoch is one pass over the unlabelled
    ones, the labelled ones cycled. The labelled share of a batch is ``labeled_fraction`` (default:
    :func:`default_labeled_fraction`), or the labelled share of the training set if larger."""

    labeled: torch.Tensor
    unlabeled: torch.Tensor
    labeled_per_batch: int
    unlabeled_per_batch: int

    @classmethod
    def of(cls, train: Split, batch_size: int, labeled_fraction: float | None = None) -> LabelMix:
        hidden = train.y == HIDDEN
        labeled, unlabeled = torch.nonzero(~hidden)[:, 0], torch.nonzero(hidden)[:, 0]
        if len(labeled) and batch_size < 2:
            raise SettingError("batch_size", f"batch_size={batch_size} leaves no room for unlabelled images "
                                             f"beside the labelled ones; choose batch_size=2 or more")
        if labeled_fraction is None:
            labeled_fraction = default_labeled_fraction(len(labeled), len(unlabeled))
        share = max(labeled_fraction, len(labeled) / len(train)) if len(labeled) else 0.0
        per_batch = min(batch_size - 1, max(1, round(share * batch_size))) if len(labeled) else 0
        return cls(labeled, unlabeled, per_batch, batch_size - per_batch)

    @property
    def steps(self) -> int:
        return math.ceil(len(self.unlabeled) / self.unlabeled_per_batch)

    def epoch_order(self, generator: torch.Generator) -> torch.Tensor:
        """One epoch's indices: the unlabelled images shuffled, then the labelled stream of every step."""
        unlabeled = self.unlabeled[torch.randperm(len(self.unlabeled), generator=generator).to(self.unlabeled.device)]
        needed = self.steps * self.labeled_per_batch
        rounds = math.ceil(needed / len(self.labeled)) if len(self.labeled) else 0
        stream = [self.labeled[torch.randperm(len(self.labeled), generator=generator).to(self.labeled.device)]
                  for _ in range(rounds)]
        return torch.cat([unlabeled, *stream])[:len(unlabeled) + needed]

    def batches(self, data: Dataset, order: torch.Tensor,
                first: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(x_labeled, y_labeled, x_unlabeled)`` per step of the epoch ``order``, from step ``first``."""
        unlabeled, stream = order[:len(self.unlabeled)], order[len(self.unlabeled):]
        for step in range(first, self.steps):
            u = unlabeled[step * self.unlabeled_per_batch:(step + 1) * self.unlabeled_per_batch]
            labeled = stream[step * self.labeled_per_batch:(step + 1) * self.labeled_per_batch]
            x_l, x_u = as_floats(data.train.x[labeled]), as_floats(data.train.x[u])
            if data.dynamic_binarization:
                x_l, x_u = binarize_afresh(x_l), binarize_afresh(x_u)
            yield x_l, data.train.y[labeled], x_u
