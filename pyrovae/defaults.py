"""The defaults one setting takes from another, applied by :func:`configure` for the CLI and Python alike.

A setting whose default depends on other settings is left unset (``None``) in its settings
class: ``DataConfig.binarize``, which follows the likelihood, and the few-label settings of
:class:`~pyrovae.model.config.ModelConfig`, which follow the data's ``labeled``. The model
and data layers cannot see each other's settings, so the two meet here, above both.
"""

from __future__ import annotations

import dataclasses

from pyrovae.data.datasets import Binarize, DataConfig
from pyrovae.model.config import Likelihood, ModelConfig


def binarization(likelihood: Likelihood) -> Binarize:
    """The binarization of the data that ``likelihood`` can score: dynamic for the Bernoulli, none for the others."""
    return "dynamic" if likelihood == "bernoulli" else "none"


def configure(model: ModelConfig, data: DataConfig) -> tuple[ModelConfig, DataConfig]:
    """``model`` and ``data`` with every unset setting chosen from the others, as ``pyrovae train`` chooses it.

    - ``data.binarize``: :func:`binarization` of ``model.likelihood``;
    - ``model.grayscale_targets``: on when a Bernoulli likelihood meets unbinarized data;
    - the few-label settings of a conditional model (``label_guide``, ``classifier_net``,
      ``class_means_init``, ``class_scales``) for ``data.labeled`` kept labels, see
      :meth:`~pyrovae.model.config.ModelConfig.with_label_defaults`.
    """
    data = dataclasses.replace(data, binarize=data.binarize or binarization(model.likelihood))
    grayscale = model.grayscale_targets or (model.likelihood == "bernoulli" and data.binarize == "none")
    return dataclasses.replace(model.with_label_defaults(data.labeled), grayscale_targets=grayscale), data
