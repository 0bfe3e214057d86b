"""pyrovae: variational autoencoders written the Pyro way.

The model and guide are Pyro functions (:class:`VAE`), trained by SVI with a torch
optimizer (:func:`fit`), evaluated per example (:func:`negative_elbo`, and
:func:`log_likelihood`, the importance-sampled log p(x)). A table's missing cells are filled by
:func:`impute`.
"""

from pyrovae.data.datasets import DataConfig, DataNotFoundError, Dataset, from_arrays, from_table, load_dataset
from pyrovae.data.tables import infer_schema, read_table
from pyrovae.defaults import configure
from pyrovae.inference.evaluate import evaluation_report, log_importance_weights, log_likelihood, negative_elbo
from pyrovae.inference.imputation import impute
from pyrovae.model.build import build_vae
from pyrovae.model.config import ModelConfig
from pyrovae.model.vae import VAE
from pyrovae.runs.checkpoint import CheckpointError
from pyrovae.runs.load import LoadedRun, load_run
from pyrovae.runs.rundir import RunDir
from pyrovae.training.config import TrainConfig
from pyrovae.training.loop import fit

__version__ = "0.3.0"

__all__ = [
    "VAE",
    "evaluation_report",
    "log_likelihood", "ModelConfig", "build_vae", "DataConfig", "Dataset", "DataNotFoundError", "from_arrays",
    "load_dataset", "configure", "TrainConfig", "fit", "negative_elbo", "log_importance_weights", "RunDir",
    "load_run", "LoadedRun", "CheckpointError", "from_table", "read_table", "infer_schema", "impute",
]
