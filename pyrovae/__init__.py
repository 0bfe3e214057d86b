"""pyrovae: variational autoencoders written the Pyro way.

The model and guide are Pyro functions (:class:`VAE`), trained by SVI with a torch
optimizer (:func:`fit`), evaluated per example (:func:`negative_elbo`, and
:func:`log_likelihood`, the importance-sampled log p(x)).
"""

from pyrovae.build import ModelConfig, build_vae
from pyrovae.data import DataConfig, DataNotFoundError, Dataset, from_arrays, load_dataset
from pyrovae.evaluate import evaluation_report, log_importance_weights, log_likelihood, negative_elbo
from pyrovae.runs import CheckpointError, LoadedRun, RunDir, load_run
from pyrovae.train import TrainConfig, fit
from pyrovae.vae import VAE

__version__ = "0.3.0"

__all__ = [
    "VAE",
    "evaluation_report",
    "log_likelihood", "ModelConfig", "build_vae", "DataConfig", "Dataset", "DataNotFoundError", "from_arrays",
    "load_dataset", "TrainConfig", "fit", "negative_elbo", "log_importance_weights", "RunDir",
    "load_run", "LoadedRun", "CheckpointError",
]
