"""The fixed splits: the validation images held out of training, and the test images held out of a dataset without
a test split of its own.

Each is a random split drawn with :data:`SPLIT_SEED`, so that it holds the same images, in the same order, on every
machine and in every run; a split that moved would change every result trained on it (``tests/test_data.py`` pins
them). The validation split is drawn by torch's ``random_split``; the test hold-outs by scikit-learn's
``train_test_split`` over numpy's PCG64 generator, whose legacy ``RandomState`` permutation numpy keeps unchanged
across versions.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import random_split

SPLIT_SEED = 0
"""Seed of every fixed split."""


def validation_indices(count: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The indices kept for training and those held out for validation among ``count`` training examples: a fixed
    random ``fraction`` of them."""
    n_val = max(1, round(count * fraction))
    if n_val >= count:
        raise ValueError(f"cannot hold out {n_val} of {count} examples for validation; "
                         f"use more data or a smaller val_fraction")
    held, kept = random_split(range(count), [n_val, count - n_val], generator=torch.Generator().manual_seed(SPLIT_SEED))
    return torch.tensor(kept.indices), torch.tensor(held.indices)


def shuffled_cut(count: int, at: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed shuffle of the indices ``0 .. count - 1``, cut after its first ``at``: the two parts, in order."""
    from sklearn.model_selection import train_test_split  # with scipy, most of a second to import: only here

    shuffle = np.random.RandomState(np.random.PCG64(SPLIT_SEED))
    rest, first = train_test_split(np.arange(count), test_size=at, random_state=shuffle)  # the test part is first
    return first, rest
