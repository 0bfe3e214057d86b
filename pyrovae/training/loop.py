"""Training: stochastic variational inference with a torch optimizer over the VAE's parameters.

Each step minimizes the ELBO estimate of ``Trace_ELBO`` (Monte Carlo KL) or
``TraceMeanField_ELBO`` (closed-form KL; Su Jianlin 2018, eq. 4) with Adam, through the
device-resident versions in :mod:`pyrovae.inference.objectives`. The loss is accumulated on the
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
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from tqdm.auto import tqdm

from pyrovae.data.datasets import Dataset, as_floats, from_arrays
from pyrovae.distributed import SINGLE, Processes, all_reduce_sum, any_rank, gather_objects, join, shard
from pyrovae.inference.evaluate import evaluating, negative_elbo
from pyrovae.inference.objectives import ELBOParts
from pyrovae.inference.semi_supervised import (
    SemiSupervisedLoss,
    SemiSupervisedParts,
    place_class_means,
)
from pyrovae.memory import OutOfMemory, is_out_of_memory
from pyrovae.model.priors import ClassMeansPrior
from pyrovae.model.vae import VAE
from pyrovae.randomness import derived_seed, rng_state, set_rng_state
from pyrovae.runs.rundir import CHECKPOINT, RunDir
from pyrovae.settings import resolve_device
from pyrovae.training.config import LOWER_WHEN_OUT_OF_MEMORY, PROGRESS_REFRESH_STEPS, TrainConfig
from pyrovae.training.preflight import check_training
from pyrovae.training.step import ELBOLoss, SVIStep, epoch_batches, training_objective
from pyrovae.training.stopping import StopRequest, TrainingInterrupted

log = logging.getLogger(__name__)


def run_config(vae: VAE, data: Dataset, config: TrainConfig) -> dict[str, Any]:
    """The ``config.json`` of a run: model, data and training settings (``None`` where unknown), and what
    data were read (see :mod:`pyrovae.data.sources`)."""
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
    pairs or an array, split as :func:`~pyrovae.data.datasets.from_arrays` splits them.

    ``progress`` shows a progress bar over the steps, ``verbose`` prints one line per epoch.
    The model and guide get the KL weight of each step and the training set's size as
    their ``kl_weight`` and ``data_size`` arguments. With ``run_dir``, writes ``config.json``,
    appends to ``metrics.jsonl`` and saves ``checkpoint.pt`` after every epoch; ``resume=True``
    continues from that checkpoint (mid-epoch if it was interrupted) up to ``config.epochs`` in all. Without resuming,
    the seed is set first (set it before building the VAE too, for a reproducible
    initialization). SIGINT or SIGTERM saves a checkpoint and raises
    :class:`~pyrovae.training.stopping.TrainingInterrupted`; a non-finite loss or gradient raises
    ``FloatingPointError``. Pyro's global param store is cleared: the parameters live in
    ``vae`` and Adam updates them there. Launched by torchrun, every process calls
    ``fit`` alike; they train data-parallel and rank 0 alone writes the run directory.
    While it does, it holds the directory's lock: another process writing the same
    ``run_dir`` gets :class:`~pyrovae.runs.lock.RunInUse`. A run that fails before its first
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
            from pyrovae.report.tensorboard import EventLog

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
