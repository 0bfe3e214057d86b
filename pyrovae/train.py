"""Training: stochastic variational inference with a torch optimizer over the VAE's parameters.

Each step minimizes the ELBO estimate of ``Trace_ELBO`` (Monte Carlo KL) or
``TraceMeanField_ELBO`` (closed-form KL; Su Jianlin 2018, eq. 4) with Adam, through the
device-resident versions in :mod:`pyrovae.objectives`. The loss is accumulated on the
device and read back once per epoch, so a GPU is never made to wait for the host
inside an epoch. Under ``torchrun`` the objective is wrapped in
``DistributedDataParallel`` (see :mod:`pyrovae.distributed`).

A run loses at most the step in flight: a checkpoint is saved after every epoch, and
SIGINT or SIGTERM saves one mid-epoch (the epoch's order, position, running sums and
random state) from which ``resume`` continues as if never stopped (under torchrun, from
the last complete epoch). A non-finite loss or
gradient stops training, keeping the last good checkpoint, unless ``skip_nonfinite``
allows that many bad batches to be skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pyro
import torch
from pyro.infer.util import is_validation_enabled
from torch import nn
from tqdm.auto import tqdm

from pyrovae.data import Dataset, as_floats, from_arrays
from pyrovae.distributed import SINGLE, Processes, all_reduce_sum, any_rank, data_parallel, gather_objects, join, shard
from pyrovae.evaluate import evaluating, negative_elbo
from pyrovae.footprint import (
    SIZE_DEFAULTS,
    OutOfMemory,
    TooBig,
    free_bytes,
    in_bytes,
    is_out_of_memory,
    largest,
    model_sizes,
    parameter_bytes,
    peak_at,
    where,
)
from pyrovae.kl_weight import KLSchedule
from pyrovae.objectives import ESTIMATORS, ELBOParts, IWAEBound, MeanFieldELBO, TraceELBO
from pyrovae.priors import ClassMeansPrior
from pyrovae.randomness import derived_seed, rng_state, set_rng_state
from pyrovae.runs import CHECKPOINT, RunDir
from pyrovae.semi_supervised import (
    KINGMA_AUX_WEIGHT,
    LabelMix,
    SemiSupervisedLoss,
    SemiSupervisedParts,
    learns_from_few_labels,
    place_class_means,
    visible_labels,
)
from pyrovae.settings import SettingError, check_choice, check_choices, check_positive, setting
from pyrovae.stopping import StopRequest, TrainingInterrupted
from pyrovae.streaming import StreamedSplit
from pyrovae.vae import VAE

log = logging.getLogger(__name__)

ELBOS = {"trace": TraceELBO, "meanfield": MeanFieldELBO, "iwae": IWAEBound}
Elbo = Literal[tuple(ELBOS)]
Estimator = Literal[ESTIMATORS]
Device = Literal["auto", "cpu", "cuda"]
DEVICES = get_args(Device)
ADAM_MOMENTS = 2
"""Tensors of a parameter's size that Adam keeps: the running means of the gradient and of its square."""
LOWER_WHEN_OUT_OF_MEMORY = ("batch_size", "particles", "z_dim", "hidden")
"""The settings to lower when a step runs out of memory, the biggest lever first."""
PROGRESS_REFRESH_STEPS = 50
"""Steps between updates of the progress bar's running loss (each one reads the loss from the device)."""


@dataclasses.dataclass
class TrainConfig:
    """Optimization settings (saved in ``config.json``); the KL settings make a
    :class:`~pyrovae.kl_weight.KLSchedule`."""

    epochs: int = setting(100, "epochs in all, counted from the run's start (when resuming: the total to reach)")
    batch_size: int = setting(128, "examples per step; under torchrun the global batch, split evenly among the "
                                   "processes")
    lr: float = setting(1e-3, "Adam learning rate")
    elbo: Elbo = setting("trace", "trace: Trace_ELBO (Monte Carlo KL); meanfield: TraceMeanField_ELBO (closed-form "
                                  "KL); iwae: the importance-weighted bound with particles=K")
    device: Device = setting("auto", "auto picks CUDA when there is a GPU")
    seed: int = setting(0, "seeds torch, numpy and Pyro")
    kl_weight: float = setting(1.0, "weight of the KL term (1 is the ELBO; beta > 1 a beta-VAE)", metavar="BETA")
    kl_warmup: float = setting(0.0, "raise the KL weight linearly from 0 to kl_weight=BETA over this many epochs",
                               metavar="EPOCHS")
    kl_balance: float | None = setting(None, "set the KL weight automatically: from 0, w += ALPHA * (recon - w * KL) "
                                             "after every batch (e.g. 1e-5)", metavar="ALPHA")
    particles: int = setting(1, "vectorized samples of z per example and step (averaged for trace and meanfield)",
                             metavar="K")
    estimator: Estimator = setting("standard", "the gradient estimator of elbo='iwae': standard (Burda et al. 2015), "
                                               "stl (sticking the landing, Roeder et al. 2017) or dreg (doubly "
                                               "reparameterized, Tucker et al. 2019), whose encoder gradient keeps "
                                               "its signal as K grows")
    labeled_fraction: float | None = setting(None, "with hidden labels (labeled=N): the least share of labelled "
                                                   "images in every batch, the labelled ones oversampled (default: "
                                                   "the share that cycles them about 60 times an epoch, from 0.1 to "
                                                   "0.5: 0.5 for 1,000 of 54,000 images, 0.1 for 100)", metavar="F")
    aux_weight: float | None = setting(None, "weight ALPHA of the classification term -ALPHA log q(y|x) of every "
                                             "labelled image, with label_guide='classifier' (default: 0.1 x the "
                                             "training images, as Kingma et al. 2014)", metavar="ALPHA")
    skip_nonfinite: int = setting(0, "skip up to N batches whose loss or gradient is NaN or infinite (with 0, the "
                                     "first one stops training and keeps the last good checkpoint)", metavar="N")
    compile: bool = setting(False, "torch.compile the encoder and decoder (slow to start; pays off on long GPU runs)")
    tf32: bool = setting(False, "let CUDA matmuls and convolutions use TensorFloat-32 (faster on Ampere and later "
                                "GPUs, ~3 digits)")
    tensorboard: bool = setting(False, "write TensorBoard events into RUN/tensorboard: the metrics every epoch, "
                                       "pictures and histograms of the posterior means, the Embedding Projector at "
                                       "the end (needs `pip install pyrovae[tensorboard]`)")
    tensorboard_every: int = setting(10, "with tensorboard=True, the pictures and histograms every N epochs (and "
                                         "at the first and the last)", metavar="N")

    def __post_init__(self) -> None:
        check_choices(self)
        check_positive(self, "epochs", "batch_size", "particles", "lr", "tensorboard_every")
        if self.labeled_fraction is not None and not 0 < self.labeled_fraction < 1:
            raise SettingError("labeled_fraction", f"labeled_fraction is a share of each batch and must lie strictly "
                                                   f"between 0 and 1, got {self.labeled_fraction}")
        if self.aux_weight is not None and not self.aux_weight >= 0:
            raise SettingError("aux_weight", f"aux_weight cannot be negative, got {self.aux_weight}")
        if self.skip_nonfinite < 0:
            raise SettingError("skip_nonfinite",
                               f"skip_nonfinite counts batches and cannot be negative, got {self.skip_nonfinite}")
        if self.estimator != "standard" and self.elbo != "iwae":
            raise SettingError("estimator", f"estimator={self.estimator!r} estimates the gradient of the iwae bound; "
                                            f"add elbo='iwae' (with particles=1 it is the ELBO)")
        resolve_device(self.device)
        _ = self.kl_schedule  # raises on KL settings that make no schedule
        if self.tensorboard:
            from pyrovae.tensorboard import check_installed  # imported when asked for: it brings matplotlib

            check_installed()

    @property
    def kl_schedule(self) -> KLSchedule:
        return KLSchedule(self.kl_weight, self.kl_warmup, self.kl_balance)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; asking for CUDA without one is an error."""
    check_choice("device", name, DEVICES)
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but PyTorch sees no CUDA GPU; use device='cpu' or "
                         "device='auto'")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


class ELBOLoss(nn.Module):
    """The VAE's minibatch objective as a module (like Pyro's ``ELBOModule``), so DDP can wrap it.

    ``forward(x, y, kl_weight=w)`` runs ``elbo`` on the VAE's model and guide, called with
    those arguments and ``data_size``, and returns the loss to minimize and its
    :class:`~pyrovae.objectives.ELBOParts` summed over the minibatch (detached; the loss
    without the data plate's dataset scaling). DDP then all-reduces the gradients.
    """

    def __init__(self, vae: VAE, elbo: pyro.infer.ELBO, data_size: int | None = None):
        super().__init__()
        self.vae, self.elbo, self.data_size = vae, elbo, data_size

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, *,
                kl_weight: float | torch.Tensor = 1.0) -> tuple[torch.Tensor, ELBOParts]:
        parts = self.elbo.loss_and_parts(self.vae.model, self.vae.guide, x, y, kl_weight=kl_weight,
                                         data_size=self.data_size)
        plate_scale = 1.0 if self.data_size is None else self.data_size / len(x)
        return parts.loss, parts._replace(loss=parts.loss.detach() / plate_scale)

    def epoch_metrics(self, totals: torch.Tensor) -> dict[str, float]:
        """Per-example means of the loss and its reconstruction and KL terms from an epoch's summed parts
        and, last, the examples seen."""
        loss, recon, kl = (totals[:3] / max(totals[3].item(), 1)).tolist()
        return {"train_loss": loss, "recon": recon, "kl": kl}


class SVIStep:
    """One optimizer step on a minibatch's (KL-weighted) negative ELBO.

    ``data_size``, the number of training examples, is passed to the model and guide with
    every step (the data plate scales the minibatch to the dataset), the KL weight with
    each call: ``step(x, y, kl_weight=w)``. ``objective`` replaces that :class:`ELBOLoss`
    by another objective module called with the minibatch (the semi-supervised one of
    :mod:`pyrovae.semi_supervised` takes ``(x_labeled, y_labeled, x_unlabeled)``). Returns
    the objective's detached parts, each summed over the minibatch, and a 0-dim flag: were
    the loss and every gradient finite? With ``skip_nonfinite`` the flag is read before the
    update (a device sync per step) and a non-finite step changes neither parameters nor
    optimizer state; otherwise the update always happens and the flag stays on the device.
    Under torchrun (``processes``) the objective runs inside DDP, which all-reduces the
    gradients. Pyro checks the model and guide (shapes, supports, plate structure) on the
    first step; the structure is static, so later steps skip those checks.
    """

    def __init__(self, vae: VAE, optimizer: torch.optim.Optimizer, elbo: pyro.infer.ELBO,
                 skip_nonfinite: bool = False, processes: Processes = SINGLE, data_size: int | None = None,
                 objective: nn.Module | None = None):
        self.vae, self.optimizer = vae, optimizer
        self.skip_nonfinite = skip_nonfinite
        self.parameters = [p for group in optimizer.param_groups for p in group["params"]]
        self.objective = objective if objective is not None else ELBOLoss(vae, elbo, data_size)
        self.loss = data_parallel(self.objective) if processes.parallel else self.objective
        self.checked = False

    def __call__(self, *batch: torch.Tensor | None,
                 kl_weight: float | torch.Tensor = 1.0) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        with pyro.validation_enabled(is_validation_enabled() and not self.checked):
            loss, parts = self.loss(*batch, kl_weight=kl_weight)
        self.checked = True
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # The sum of the loss and every gradient entry is finite exactly when they all are (short of
        # the sum overflowing past 3e38); cheaper than a norm.
        sums = [loss.detach(), *(p.grad.sum() for p in self.parameters if p.grad is not None)]
        finite = torch.isfinite(torch.stack(sums).sum())
        if not (self.skip_nonfinite and not finite):
            self.optimizer.step()
        return parts, finite


def run_config(vae: VAE, data: Dataset, config: TrainConfig) -> dict[str, Any]:
    """The ``config.json`` of a run: model, data and training settings (``None`` where unknown), and what
    data were read (see :mod:`pyrovae.sources`)."""
    def as_dict(settings: Any) -> dict[str, Any] | None:
        return None if settings is None else dataclasses.asdict(settings)

    return {"model": as_dict(vae.config), "data": as_dict(data.config), "train": as_dict(config),
            "source": data.provenance}


@dataclasses.dataclass
class EpochState:
    """An epoch in progress: this process's shuffled order, the steps taken, and device-side running sums.

    ``sums`` holds the objective's parts (the loss, reconstruction and KL terms) summed
    over the ``seen`` examples, ``weight_sum`` the KL weights of the steps taken, ``first_bad_step`` the
    first step whose loss or gradient was not finite (-1: none). Saved in a checkpoint
    when training is interrupted, it lets the epoch finish exactly as it would have.
    """

    order: torch.Tensor
    sums: torch.Tensor
    weight_sum: torch.Tensor
    first_bad_step: torch.Tensor
    step: int = 0
    seen: int = 0
    skipped: int = 0
    seconds: float = 0.0

    @classmethod
    def start(cls, order: torch.Tensor, num_parts: int) -> EpochState:
        device = order.device
        return cls(order=order, sums=torch.zeros(num_parts, device=device),
                   weight_sum=torch.zeros((), dtype=torch.float64, device=device),
                   first_bad_step=torch.full((), -1, device=device))

    def add(self, parts: tuple[torch.Tensor, ...], finite: torch.Tensor, kl_weight: float | torch.Tensor,
            examples: int) -> None:
        """Count a step taken: its loss parts, its KL weight, and (on the device) whether it was finite."""
        self.first_bad_step = torch.where((self.first_bad_step < 0) & ~finite, self.step, self.first_bad_step)
        self.weight_sum += kl_weight
        self.sums += torch.stack(parts)
        self.seen += examples

    def to_checkpoint(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> EpochState:
        return cls(**saved)


def epoch_metrics(state: EpochState, objective: ELBOLoss | SemiSupervisedLoss,
                  processes: Processes = SINGLE) -> dict[str, float]:
    """The objective's per-example means over all processes, the mean KL weight, and the skipped batches."""
    totals = all_reduce_sum(torch.cat([state.sums, state.sums.new_tensor([state.seen])]), processes)
    steps_taken = max(state.step - state.skipped, 1)
    return {**objective.epoch_metrics(totals), "kl_weight": state.weight_sum.item() / steps_taken,
            "skipped_batches": state.skipped}


def check_few_labels(config: TrainConfig, processes: Processes) -> None:
    """Refuse the settings that training with hidden labels cannot honour, before any work."""
    if config.elbo == "iwae":
        raise SettingError("elbo", "the iwae bound does not sum out hidden labels; with labeled=N train with "
                                   "elbo='trace' or elbo='meanfield'")
    if config.kl_balance is not None:
        raise SettingError("kl_balance", "kl_balance needs the reconstruction and KL terms of every batch, which "
                                         "summing out hidden labels does not split; use kl_weight=BETA or "
                                         "kl_warmup=EPOCHS")
    if processes.parallel:
        raise ValueError("training with hidden labels (labeled=N) runs in one process; start it without torchrun")


def check_training(vae: VAE, data: Dataset, config: TrainConfig, processes: Processes = SINGLE) -> None:
    """Refuse, before any work, what training ``vae`` on ``data`` (both on the training device) cannot do:
    images outside the likelihood's support, bad labels, settings that hidden labels cannot honour, and
    sizes that do not fit in memory (:func:`check_step_fits`)."""
    if isinstance(data.train, StreamedSplit):  # uint8 pixels: the first batch shows whether the model reads them
        vae.check_data(next(data.batches(config.batch_size, shuffle=False))[0], "training images")
    else:
        vae.check_data(data.observed_train_images(), "training images")
    vae.check_data(as_floats(data.val.x), "validation images")
    vae.check_labels(visible_labels(data.train), "training labels")  # the hidden ones are -1
    vae.check_labels(data.val.y, "validation labels")
    if learns_from_few_labels(vae, data):
        check_few_labels(config, processes)
        if isinstance(data.train, StreamedSplit):
            raise SettingError("storage", "training with hidden labels mixes labelled images into every batch from "
                                          "memory; use storage='memory'")
    check_step_fits(vae, data, config, processes)


def nonfinite_message(epoch: int, step: int, steps: int, config: TrainConfig, kept: str) -> str:
    """Why training stopped on a NaN or infinity, what was kept, and the usual fixes."""
    return (f"training stopped: the loss or a gradient was NaN or infinite at epoch {epoch}, step {step} of {steps}; "
            f"{kept}. Usual fixes: a lower learning rate (lr={config.lr / 10:g}, now {config.lr:g}), a KL warm-up "
            f"(kl_warmup=10), a larger scale for gaussian or laplace likelihoods (likelihood_scale=0.3), or "
            f"skip_nonfinite=N to skip up to N bad batches")


def fit(vae: VAE, data: Dataset | torch.utils.data.Dataset | torch.Tensor | np.ndarray,
        config: TrainConfig | None = None, run_dir: str | Path | None = None, resume: bool = False,
        progress: bool = True, verbose: bool = True) -> list[dict[str, float]]:
    """Train ``vae`` on ``data.train`` by SVI; return one metrics row per epoch trained.

    ``data`` may also be the training images alone, a torch dataset of ``(image, label)``
    pairs or an array, split as :func:`~pyrovae.data.from_arrays` splits them.

    ``progress`` shows a progress bar over the steps, ``verbose`` prints one line per epoch.
    The model and guide get the KL weight of each step and the training set's size as
    their ``kl_weight`` and ``data_size`` arguments. With ``run_dir``, writes ``config.json``,
    appends to ``metrics.jsonl`` and saves ``checkpoint.pt`` after every epoch; ``resume=True``
    continues from that checkpoint (mid-epoch if it was interrupted) up to ``config.epochs`` in all. Without resuming,
    the seed is set first (set it before building the VAE too, for a reproducible
    initialization). SIGINT or SIGTERM saves a checkpoint and raises
    :class:`~pyrovae.stopping.TrainingInterrupted`; a non-finite loss or gradient raises
    ``FloatingPointError``. Pyro's global param store is cleared: the parameters live in
    ``vae`` and Adam updates them there. Launched by torchrun, every process calls
    ``fit`` alike; they train data-parallel and rank 0 alone writes the run directory.
    While it does, it holds the directory's lock: another process writing the same
    ``run_dir`` gets :class:`~pyrovae.lock.RunInUse`. A run that fails before its first
    checkpoint removes the directory it created.
    """
    config = config or TrainConfig()
    data = data if isinstance(data, Dataset) else from_arrays(data)
    processes, device = join(resolve_device(config.device))
    if resume and run_dir is None:
        raise ValueError("resume=True needs the run_dir to resume from")
    if config.batch_size % processes.world_size:
        raise ValueError(f"the batch size {config.batch_size} is the global batch and must divide evenly among "
                         f"{processes.world_size} processes; choose a multiple of {processes.world_size}")
    run = RunDir(run_dir) if run_dir is not None else None
    writer = run if processes.is_main else None  # rank 0 alone writes the run directory
    if writer is not None:
        writer.check(resume)  # writable, and holding no earlier run unless it is resumed
    vae.to(device)
    data = data.to(device)
    check_training(vae, data, config, processes)
    if config.elbo == "meanfield" and not vae.closed_form_kl and processes.is_main:
        log.warning("elbo='meanfield' has no closed-form KL for a flow guide or two stochastic layers: training with "
                    "the sampled KL, as elbo='trace'")
    if config.batch_size > len(data.train) and processes.is_main:
        log.warning(f"batch_size={config.batch_size} is larger than the training set ({len(data.train)} images): "
                    f"every step trains on all of them, one step per epoch")
    with writer.writing() if writer is not None else contextlib.nullcontext():
        if writer is not None:
            writer.prepare(resume)
        return _train(vae, data, config, run, resume, processes, device, progress, verbose)


def _train(vae: VAE, data: Dataset, config: TrainConfig, run: RunDir | None, resume: bool, processes: Processes,
           device: torch.device, progress: bool, verbose: bool) -> list[dict[str, float]]:
    """:func:`fit` once its input is checked (and, on rank 0, the run directory locked)."""
    if config.tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if config.compile:
        vae.encoder.compile()
        vae.decoder.compile()

    pyro.clear_param_store()
    optimizer = torch.optim.Adam(vae.parameters(), lr=config.lr, fused=True)  # one kernel per step
    saved = {"epoch": 0, "metrics": [], "skipped": 0, "partial": None,
             "kl_weight": torch.as_tensor(config.kl_schedule.initial_weight(device))}
    if resume:
        saved = run.load_checkpoint(map_location=device)
        run.restore(saved, vae, optimizer)
        ranks = saved["rng"].get("ranks", [])
        set_rng_state(ranks[processes.rank] if len(ranks) == processes.world_size else saved["rng"])
        if processes.parallel and len(ranks) != processes.world_size:  # another world size: fresh streams
            pyro.set_rng_seed(derived_seed(config.seed, saved["epoch"], processes.rank))
    else:
        pyro.set_rng_seed(config.seed + processes.rank)  # each process its own noise; rank 0 as when alone
    if run is not None and processes.is_main:
        run.create()
        if resume:
            run.write_metrics(saved["metrics"])
        run.write_config(run_config(vae, data, config))

    return Trainer(vae, data, config, run, optimizer, saved, processes).train_epochs(progress, verbose)


def training_objective(vae: VAE, data: Dataset, config: TrainConfig,
                       batch_size: int) -> tuple[ELBOLoss | SemiSupervisedLoss, LabelMix | None]:
    """The minibatch objective that trains ``vae`` on ``data``, and how its batches mix labels (``None``: they
    do not, every label is known).

    With hidden labels it is the semi-supervised objective over batches of ``batch_size``
    mixed images; otherwise the (KL-weighted) negative ELBO that ``config.elbo`` names.
    """
    name = "trace" if config.elbo == "meanfield" and not vae.closed_form_kl else config.elbo  # see fit's note
    options = {"estimator": config.estimator} if name == "iwae" else {}
    elbo = ELBOS[name](num_particles=config.particles, vectorize_particles=config.particles > 1,
                       max_plate_nesting=1, **options)  # the data plate; particles go left of it
    if not learns_from_few_labels(vae, data):
        return ELBOLoss(vae, elbo, len(data.train)), None
    mix = LabelMix.of(data.train, batch_size, config.labeled_fraction)
    aux_weight = KINGMA_AUX_WEIGHT * len(data.train) if config.aux_weight is None else config.aux_weight
    return SemiSupervisedLoss(vae, elbo, len(mix.labeled), len(mix.unlabeled), aux_weight, config.particles), mix


def epoch_batches(data: Dataset, mix: LabelMix | None, batch_size: int, order: torch.Tensor,
                  first: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
    """The minibatches of the epoch ``order`` from step ``first``: ``(x, y)``, or ``(x_labeled, y_labeled,
    x_unlabeled)`` when ``mix`` mixes labelled and unlabelled images."""
    if mix is None:
        return data.batches(batch_size, order=order, first=first)
    return mix.batches(data, order, first=first)


def step_bytes(vae: VAE, data: Dataset, config: TrainConfig, batch_size: int) -> float:
    """About the bytes one training step of ``batch_size`` examples allocates: gradients and activations.

    Measured on probe steps at a few examples and at most two particles, then scaled to
    ``batch_size`` examples times ``config.particles``. The probes run in eval mode (no
    training step is taken), change no parameter and draw nothing from the caller's random
    streams.
    """
    probe_particles = min(config.particles, 2)
    probe_config = dataclasses.replace(config, particles=probe_particles)

    def step(examples: int) -> None:
        objective, mix = training_objective(vae, data, probe_config, examples)
        order = torch.arange(len(data.train), device=data.train.y.device)
        if mix is not None:
            order = mix.epoch_order(torch.Generator().manual_seed(0))
        objective(*next(epoch_batches(data, mix, examples, order)))[0].backward()

    with torch.random.fork_rng(devices=[vae.device] if vae.device.type == "cuda" else []), evaluating(vae):
        needed = peak_at(step, batch_size * config.particles / probe_particles)
    vae.zero_grad(set_to_none=True)
    return needed


def check_step_fits(vae: VAE, data: Dataset, config: TrainConfig, processes: Processes = SINGLE) -> None:
    """Refuse, before any work, training settings whose steps cannot fit in the device's free memory.

    Training will still allocate Adam's two moments and, every step, the gradients and the
    activations (:func:`step_bytes`). The refusal names the setting furthest above its default.
    """
    batch_size = min(config.batch_size // processes.world_size, len(data.train))
    needed = ADAM_MOMENTS * parameter_bytes(vae) + step_bytes(vae, data, config, batch_size)
    free = free_bytes(vae.device)
    if needed <= free:
        return
    sizes = {"batch_size": config.batch_size, "particles": config.particles}
    if vae.config is not None:
        sizes |= model_sizes(vae.config)
    culprit = largest(sizes, {"batch_size": TrainConfig.batch_size, "particles": TrainConfig.particles,
                              **SIZE_DEFAULTS})
    if culprit == "batch_size":
        raise TooBig(culprit, f"batch_size={config.batch_size} needs about {in_bytes(needed)} per step; "
                              f"{where(vae.device)} has {in_bytes(free)} free; lower batch_size")
    raise TooBig(culprit, f"{culprit}={sizes[culprit]} needs about {in_bytes(needed)} per step at "
                          f"batch_size={config.batch_size}; {where(vae.device)} has {in_bytes(free)} free; "
                          f"lower {culprit} or batch_size", others=("batch_size",))


class Trainer:
    """The epoch loop of :func:`fit`: train, check for non-finite steps, validate, log, checkpoint."""

    def __init__(self, vae: VAE, data: Dataset, config: TrainConfig, run: RunDir | None,
                 optimizer: torch.optim.Optimizer, saved: dict[str, Any], processes: Processes = SINGLE):
        self.vae, self.data, self.config, self.optimizer = vae, data, config, optimizer
        self.processes = processes
        self.run = run if processes.is_main else None
        self.batch_size = config.batch_size // processes.world_size
        objective, self.mix = training_objective(vae, data, config, self.batch_size)
        if self.mix is not None:
            self.steps = self.mix.steps
        else:
            self.steps = math.ceil(math.ceil(len(data.train) / processes.world_size) / self.batch_size)
        self.svi_step = SVIStep(vae, optimizer, objective.elbo, config.skip_nonfinite > 0, processes,
                                objective=objective)
        self.kl_weight: float | torch.Tensor = saved["kl_weight"]  # the balance goes on from it; schedules reset it
        self.epoch = saved["epoch"]
        self.history: list[dict[str, float]] = list(saved["metrics"])
        self.skipped = saved["skipped"]
        self.partial = None if saved["partial"] is None else EpochState.from_checkpoint(saved["partial"])
        self.stop = StopRequest()
        self.kept = "nothing was saved"
        if self.run is not None and self.run.file(CHECKPOINT).exists():
            self._kept_checkpoint(self.partial)
        if config.tensorboard and run is None:
            raise ValueError("tensorboard=True writes its events into the run directory; pass run_dir=DIR")
        self.events = None  # TensorBoard's event files, written by the process that writes the run
        if config.tensorboard and self.run is not None:
            from pyrovae.tensorboard import EventLog  # imported when asked for: it brings matplotlib

            self.events = EventLog(self.run.path, data.image_shape)

    def train_epochs(self, progress: bool, verbose: bool) -> list[dict[str, float]]:
        config, trained = self.config, []
        done = self.steps * self.epoch + (self.partial.step if self.partial else 0)
        progress = progress and self.processes.is_main
        with self.stop, self.events or contextlib.nullcontext(), tqdm(
                total=max(0, self.steps * config.epochs - done), disable=not progress, unit="step",
                dynamic_ncols=True) as bar:
            while self.epoch < config.epochs:
                epoch = self.epoch + 1
                bar.set_description(f"epoch {epoch}/{config.epochs}")
                state, self.partial = self.partial or self._start(epoch), None
                self.vae.train()
                started = time.perf_counter()
                self._train_epoch(epoch, state, bar)
                state.seconds += time.perf_counter() - started
                self._check_finite(epoch, state)
                if state.step < self.steps:
                    where = f"in epoch {epoch} after step {state.step} of {self.steps}"
                    if self.processes.parallel:  # the ranks' positions are not saved: go back to the epoch's start
                        raise TrainingInterrupted(self._interrupted(self.stop.requested, where, saved=False))
                    self._save(partial=state)
                    raise TrainingInterrupted(self._interrupted(self.stop.requested, where))
                self.skipped += state.skipped
                if epoch == 1 and self.clustering:
                    place_class_means(self.vae, self.data.train.x, self.config.seed)
                row = self._finish_epoch(epoch, state, bar, verbose and self.processes.is_main)
                trained.append(row)
                if any_rank(self.stop.requested is not None, self.processes):
                    signal_name = self.stop.requested or "a signal (on another rank)"
                    raise TrainingInterrupted(self._interrupted(signal_name, f"after epoch {epoch}"))
            if self.events is not None and trained:
                self.events.projector(self.vae, self.data.val, self.epoch)
        return trained

    @property
    def clustering(self) -> bool:
        """Whether the class means are learned without any label, and so placed by k-means after the first epoch."""
        return self.mix is not None and not len(self.mix.labeled) and isinstance(self.vae.prior, ClassMeansPrior)

    def _start(self, epoch: int) -> EpochState:
        """A fresh epoch: the order comes from (seed, epoch), the same on every rank, then sharded."""
        generator = torch.Generator().manual_seed(derived_seed(self.config.seed, epoch))
        if self.mix is not None:
            return EpochState.start(self.mix.epoch_order(generator), len(SemiSupervisedParts._fields))
        return EpochState.start(shard(self.data.shuffled_order(generator), self.processes), len(ELBOParts._fields))

    def _stop_requested(self, state: EpochState) -> bool:
        """Whether to stop before the next step; all ranks agree, every :data:`PROGRESS_REFRESH_STEPS` steps."""
        if not self.processes.parallel:
            return self.stop.requested is not None
        return state.step % PROGRESS_REFRESH_STEPS == 0 and any_rank(self.stop.requested is not None, self.processes)

    def _train_epoch(self, epoch: int, state: EpochState, bar: tqdm) -> None:
        """Take the steps of the epoch left in ``state``, setting the KL weight before each.

        Returns early, between steps and before drawing the next batch (drawing consumes
        random numbers), when a stop was requested or more non-finite steps were skipped
        than ``skip_nonfinite`` allows.
        """
        schedule, svi_step = self.config.kl_schedule, self.svi_step
        budget = self.config.skip_nonfinite - self.skipped
        if self._stop_requested(state):
            return
        for batch in epoch_batches(self.data, self.mix, self.batch_size, state.order, first=state.step):
            if not schedule.balanced:
                self.kl_weight = schedule.scheduled_weight(epoch - 1 + state.step / self.steps)
            weight = self.kl_weight
            try:
                parts, finite = svi_step(*batch, kl_weight=weight)
            except (RuntimeError, MemoryError) as error:
                if not is_out_of_memory(error):
                    raise
                raise OutOfMemory(self._out_of_memory(epoch, state.step + 1), LOWER_WHEN_OUT_OF_MEMORY) from None
            state.step += 1
            bar.update()
            images = len(batch[0]) if self.mix is None else len(batch[0]) + len(batch[2])
            if svi_step.skip_nonfinite and not finite:
                state.skipped += 1
            else:
                state.add(parts, finite, weight, images)
                if schedule.balanced:
                    recon, kl, n = all_reduce_sum(torch.stack([parts.recon, parts.kl, parts.kl.new_full((), images)]),
                                                  self.processes)
                    self.kl_weight = schedule.balance(self.kl_weight, recon / n, kl / n)
            if not bar.disable and state.step % PROGRESS_REFRESH_STEPS == 0:
                bar.set_postfix(loss=f"{state.sums[0].item() / max(state.seen, 1):.2f}")
            if state.skipped > budget or self._stop_requested(state):
                return

    def _check_finite(self, epoch: int, state: EpochState) -> None:
        """Raise ``FloatingPointError`` if a step was non-finite, or more were skipped than allowed."""
        if self.skipped + state.skipped > self.config.skip_nonfinite:
            raise FloatingPointError(nonfinite_message(epoch, state.step, self.steps, self.config, self.kept) +
                                     f" ({self.skipped + state.skipped} bad batches so far, more than "
                                     f"skip_nonfinite={self.config.skip_nonfinite})")
        first_bad = int(state.first_bad_step)
        if first_bad >= 0:
            raise FloatingPointError(nonfinite_message(epoch, first_bad, self.steps, self.config, self.kept))

    def _validation_loss(self) -> float:
        """The validation negative ELBO per image, each rank computing every world_size-th image.

        With hidden training labels, the validation labels are hidden too: the ELBO of
        log p(x), y summed out, as the unlabelled images are scored in training.
        """
        val, processes = self.data.val, self.processes
        if self.mix is not None:
            with evaluating(self.vae):
                return self.svi_step.objective.unlabeled_loss(as_floats(val.x)) / len(val)
        mine = slice(processes.rank, None, processes.world_size)
        total = negative_elbo(self.vae, as_floats(val.x[mine]), val.y[mine]).sum().reshape(1)
        return all_reduce_sum(total, processes).item() / len(val)

    def _finish_epoch(self, epoch: int, state: EpochState, bar: tqdm, verbose: bool) -> dict[str, float]:
        train = epoch_metrics(state, self.svi_step.objective, self.processes)
        row = {"epoch": epoch, **train, "val_neg_elbo": self._validation_loss(), "epoch_seconds": state.seconds}
        self.epoch = epoch
        self.history.append(row)
        bar.set_postfix(loss=f"{train['train_loss']:.2f}", val=f"{row['val_neg_elbo']:.2f}")
        if verbose:
            if self.mix is None:
                parts = f"recon {train['recon']:.2f}, KL {train['kl']:.2f}"
            else:
                parts = ", ".join(f"{name} {train[key]:.2f}" for key, name in (
                    ("loss_labeled", "labelled"), ("loss_unlabeled", "unlabelled"), ("loss_aux", "-log q(y|x)"))
                    if key in train)
            bar.write(f"epoch {epoch:>4}  train loss {train['train_loss']:9.3f} ({parts}, w {train['kl_weight']:.3g})  "
                      f"val -ELBO {row['val_neg_elbo']:9.3f}  ({state.seconds:.2f}s)")
        self._save(partial=None)
        if self.run is not None:
            self.run.append_metrics(row)
        if self.events is not None:
            self.events.epoch(row, self.vae, self.data.val, self.config.epochs, self.config.tensorboard_every)
        return row

    def _save(self, partial: EpochState | None) -> None:
        """Checkpoint the state (the metrics history goes with it, so a resume can rewrite metrics.jsonl).

        Every rank takes part: the random states of all ranks are gathered to rank 0, which writes.
        """
        ranks = gather_objects(rng_state(), self.processes)
        if self.run is None:
            return
        rng = {**ranks[0], "ranks": ranks} if self.processes.parallel else ranks[0]
        self.run.save_checkpoint({"model": self.vae.state_dict(), "optimizer": self.optimizer.state_dict(),
                                  "epoch": self.epoch, "rng": rng,
                                  "kl_weight": torch.as_tensor(self.kl_weight), "metrics": self.history,
                                  "skipped": self.skipped,
                                  "partial": None if partial is None else partial.to_checkpoint()})
        self._kept_checkpoint(partial)

    def _kept_checkpoint(self, partial: EpochState | None) -> None:
        where = f"epoch {self.epoch}" if partial is None else f"step {partial.step} of epoch {self.epoch + 1}"
        self.kept = f"{self.run.file(CHECKPOINT)} still holds the state after {where}"

    def _out_of_memory(self, epoch: int, step: int) -> str:
        """Where memory ran out, what was kept, and which settings to lower."""
        config = self.config
        resume = f"; continue with resume=True and run_dir='{self.run.path}'" if self.run is not None else ""
        return (f"out of memory at epoch {epoch}, step {step} of {self.steps} (batch_size={config.batch_size}, "
                f"particles={config.particles}); {self.kept}. Lower {', '.join(LOWER_WHEN_OUT_OF_MEMORY[:-1])} or "
                f"{LOWER_WHEN_OUT_OF_MEMORY[-1]}{resume}")

    def _interrupted(self, signal_name: str, where: str, saved: bool = True) -> str:
        if self.run is None:
            return f"{signal_name} received: training stopped {where}"
        what = (f"saved {self.run.file(CHECKPOINT)}" if saved
                else f"{self.run.file(CHECKPOINT)} holds epoch {self.epoch}, where a resume starts")
        return (f"{signal_name} received: training stopped {where}; {what}; continue it with resume=True "
                f"and run_dir='{self.run.path}'")
