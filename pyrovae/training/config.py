"""The training settings, :class:`TrainConfig`."""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

from pyrovae.inference.kl_weight import KLSchedule
from pyrovae.inference.objectives import ESTIMATORS, IWAEBound, MeanFieldELBO, TraceELBO
from pyrovae.settings import (
    DEVICE_HELP,
    Device,
    SettingError,
    check_choices,
    check_positive,
    resolve_device,
    setting,
)

ELBOS = {"trace": TraceELBO, "meanfield": MeanFieldELBO, "iwae": IWAEBound}
Elbo = Literal[tuple(ELBOS)]
Estimator = Literal[ESTIMATORS]

LOWER_WHEN_OUT_OF_MEMORY = ("batch_size", "particles", "z_dim", "hidden")
"""The settings to lower when a step runs out of memory, the biggest lever first."""

PROGRESS_REFRESH_STEPS = 50
"""Steps between updates of the progress bar's running loss (each one reads the loss from the device)."""


@dataclasses.dataclass
class TrainConfig:
    """Optimization settings (saved in ``config.json``); a resumed run may change only the ``resumable`` ones."""

    epochs: int = setting(100, "epochs in all from the run's start (when resuming: the total to reach)", resumable=True)
    batch_size: int = setting(128, "examples per step (under torchrun: the global batch, split among the processes)")
    lr: float = setting(1e-3, "Adam learning rate")
    elbo: Elbo = setting("trace", "trace: Trace_ELBO (Monte Carlo KL); meanfield: TraceMeanField_ELBO (closed-form "
                                  "KL); iwae: the importance-weighted bound with particles=K")
    device: Device = setting("auto", DEVICE_HELP, resumable=True)
    seed: int = setting(0, "seeds torch, numpy and Pyro")
    kl_weight: float = setting(1.0, "weight of the KL term (1 is the ELBO; beta > 1 a beta-VAE)", metavar="BETA")
    kl_warmup: float = setting(0.0, "raise the KL weight linearly from 0 to BETA over these epochs", metavar="EPOCHS")
    kl_balance: float | None = setting(None, "set the KL weight automatically: from 0, w += ALPHA * (recon - w * KL) "
                                             "after every batch (e.g. 1e-5)", metavar="ALPHA")
    particles: int = setting(1, "samples of z per example and step (averaged by trace and meanfield)", metavar="K")
    estimator: Estimator = setting("standard", "the gradient estimator of elbo='iwae': standard (Burda et al. 2015), "
                                               "stl (sticking the landing, Roeder et al. 2017) or dreg (doubly "
                                               "reparameterized, Tucker et al. 2019; keeps its signal as K grows)")
    labeled_fraction: float | None = setting(None, "with hidden labels (labeled=N): the least share of labelled "
                                                   "images in every batch (default: the share that cycles them about "
                                                   "60 times an epoch, 0.1 to 0.5)", metavar="F")
    aux_weight: float | None = setting(None, "weight ALPHA of the classification term -ALPHA log q(y|x) of every "
                                             "labelled image, with label_guide='classifier' (default: 0.1 x the "
                                             "training images, as Kingma et al. 2014)", metavar="ALPHA")
    skip_nonfinite: int = setting(0, "skip up to N batches whose loss or gradient is NaN or infinite (with 0, the "
                                     "first one stops training)", metavar="N", resumable=True)
    clip_norm: float | None = setting(None, "clip the gradients' norm to N at each step", metavar="N", resumable=True)
    early_stop: int | None = setting(None, "stop after N epochs without a lower val -ELBO", metavar="N", resumable=True)
    keep: Literal["last", "best"] = setting("last", "best: also keep best.pt, the lowest val -ELBO", resumable=True)
    compile: bool = setting(False, "torch.compile the encoder and decoder (pays off on long GPU runs)", resumable=True)
    tf32: bool = setting(False, "let CUDA use TensorFloat-32 (faster on Ampere+ GPUs, ~3 digits)", resumable=True)
    tensorboard: bool = setting(False, "write TensorBoard's metrics, pictures and projector into RUN/tensorboard "
                                       "(needs `pip install pyrovae[tensorboard]`)", resumable=True)
    tensorboard_every: int = setting(10, "with tensorboard=True, the pictures and histograms every N epochs (and "
                                         "at the first and the last)", metavar="N", resumable=True)

    def __post_init__(self) -> None:
        check_choices(self)
        check_positive(self, "epochs", "batch_size", "particles", "lr", "tensorboard_every", "clip_norm",
                       "early_stop")
        if self.labeled_fraction is not None and not 0 < self.labeled_fraction < 1:
            raise SettingError("labeled_fraction", f"labeled_fraction is a share of each batch and must lie strictly "
                                                   f"between 0 and 1, got {self.labeled_fraction}")
        if self.aux_weight is not None and not self.aux_weight >= 0:
            raise SettingError("aux_weight", f"aux_weight cannot be negative, got {self.aux_weight}")
        if not 0 <= self.seed < 2**32:
            raise SettingError("seed", f"seed must lie in [0, 2**32), the seeds numpy takes, got {self.seed}")
        if self.skip_nonfinite < 0:
            raise SettingError("skip_nonfinite",
                               f"skip_nonfinite counts batches and cannot be negative, got {self.skip_nonfinite}")
        if self.estimator != "standard" and self.elbo != "iwae":
            raise SettingError("estimator", f"estimator={self.estimator!r} estimates the gradient of the iwae bound; "
                                            f"add elbo='iwae' (with particles=1 it is the ELBO)")
        resolve_device(self.device)
        _ = self.kl_schedule  # made now, so that KL settings that make no schedule are refused here
        if self.tensorboard:
            from pyrovae.report.tensorboard import check_installed

            check_installed()

    @functools.cached_property
    def kl_schedule(self) -> KLSchedule:
        """The KL weight's schedule that ``kl_weight``, ``kl_warmup`` and ``kl_balance`` make (made once)."""
        return KLSchedule(self.kl_weight, self.kl_warmup, self.kl_balance)
