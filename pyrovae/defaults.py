"""The defaults one setting takes from another, applied by :func:`configure` for the CLI and Python alike.

Such settings are left unset (``None``) in their classes: ``DataConfig.binarize`` follows the likelihood, the
few-label model settings the data's ``labeled``; a table's own defaults are :data:`TABLE_DEFAULTS`. The model and
data layers cannot see each other, so they meet here.
"""

from __future__ import annotations

import dataclasses

from pyrovae.data.datasets import Binarize, DataConfig
from pyrovae.model.config import Likelihood, ModelConfig

TABLE_DEFAULTS = {"z_dim": 20, "hidden": (128, 128), "elbo": "iwae", "particles": 20, "batch_size": 64}
"""The settings a table trains with unless given, in place of those sized for images: a wider latent and two
narrower hidden layers, MIWAE's bound with 20 importance samples (Mattei & Frellsen 2019) and smaller batches,
which a few hundred rows need to get enough steps. docs/benchmarks.md, "Tables", has the imputation error that
chose them."""


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
