"""The defaults one setting takes from another, applied by :func:`configure` for the CLI and Python alike.

Such settings are left unset (``None``) in their classes: ``DataConfig.binarize`` follows the likelihood, the
few-label model settings the data's ``labeled``. The model and data layers cannot see each other, so they meet here.
"""

from __future__ import annotations

import dataclasses

from pyrovae.data.datasets import Binarize, DataConfig
from pyrovae.model.config import Likelihood, ModelConfig


def binarization(likelihood: Likelihood) -> Binarize:
    """The binarization of the data that ``likelihood`` can score: dynamic for the Bernoulli, none for the others."""
    return "dynamic" if likelihood == "bernoulli" else "none"


def configure(model: ModelConfig, data: DataConfig) -> tuple[ModelConfig, DataConfig]:
    """``model`` and ``data`` with every unset setting chosen from the others, as ``pyrovae train`` chooses it:
    ``binarize`` from the likelihood, ``grayscale_targets`` on for a Bernoulli likelihood of unbinarized data, and
    the few-label settings (:meth:`~pyrovae.model.config.ModelConfig.with_label_defaults`)."""
    data = dataclasses.replace(data, binarize=data.binarize or binarization(model.likelihood))
    grayscale = model.grayscale_targets or (model.likelihood == "bernoulli" and data.binarize == "none")
    return dataclasses.replace(model.with_label_defaults(data.labeled), grayscale_targets=grayscale), data
