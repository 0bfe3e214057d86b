"""The fixed splits: validation images held out of training, and test images held out of a dataset without its own.

Each is drawn with :data:`SPLIT_SEED`, the same images in the same order on every machine and in every run (a split
that moved would change every result). The test hold-outs use numpy's legacy ``RandomState`` permutation, which
numpy keeps unchanged across versions.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import random_split

SPLIT_SEED = 0
TEST_FRACTION = 0.1
"""The share of a source without a test split of its own that is held out as its test split."""


def validation_indices(count: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The indices of ``count`` training examples kept for training, and of a fixed random ``fraction`` held out."""
    n_val = max(1, round(count * fraction))
    if n_val >= count:
        raise ValueError(f"cannot hold out {n_val} of {count} examples for validation; "
                         f"use more data or a smaller val_fraction")
    held, kept = random_split(range(count), [n_val, count - n_val], generator=torch.Generator().manual_seed(SPLIT_SEED))
    return torch.tensor(kept.indices), torch.tensor(held.indices)


def held_out_test(count: int) -> tuple[np.ndarray, np.ndarray]:
    """The positions of the test examples held out of ``count`` without a test split of their own (a fixed random
    :data:`TEST_FRACTION`), and of the rest."""
    if count < 3:
        raise ValueError(f"{count} examples are too few to hold out test and validation examples; use at least 3")
    return shuffled_cut(count, max(1, round(count * TEST_FRACTION)))


def shuffled_cut(count: int, at: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed shuffle of the indices ``0 .. count - 1``, cut after its first ``at``: the two parts, in order."""
    from sklearn.model_selection import train_test_split  # with scipy, most of a second to import: only here

    shuffle = np.random.RandomState(np.random.PCG64(SPLIT_SEED))
    rest, first = train_test_split(np.arange(count), test_size=at, random_state=shuffle)  # the test part is first
    return first, rest
