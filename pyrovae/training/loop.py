"""The training loop: SVI with Adam over the VAE's parameters, epoch by epoch, checkpointed.

Each step minimizes an ELBO of :mod:`pyrovae.inference.objectives` (``Trace_ELBO``, or
``TraceMeanField_ELBO``'s closed-form KL, Su Jianlin 2018, eq. 4); the loss stays on the device
until the epoch ends, so a GPU never waits for the host. A run loses at most the step in
flight: a checkpoint follows every epoch, and SIGINT or SIGTERM saves the position inside one,
from which ``resume`` continues as if never stopped. A non-finite loss or gradient stops
training unless ``skip_nonfinite`` allows skipping that many batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from tqdm.auto import tqdm

from pyrovae.data.datasets import Dataset, from_arrays
from pyrovae.distributed import SINGLE, Processes, all_reduce_sum, any_rank, gather_objects, join, wait_for_all
from pyrovae.memory import OutOfMemory, is_out_of_memory
from pyrovae.model.vae import VAE
from pyrovae.randomness import derived_seed, rng_state, set_rng_state
from pyrovae.runs.checkpoint import Checkpoint, CheckpointError, Progress
from pyrovae.runs.load import restore
from pyrovae.runs.rundir import CHECKPOINT, RunDir
from pyrovae.runs.writer import RunWriter
from pyrovae.settings import resolve_device
from pyrovae.training.callbacks import BestEpoch, Callback, MetricsFile, PlaceClassMeans, TensorBoardEvents
from pyrovae.training.config import LOWER_WHEN_OUT_OF_MEMORY, PROGRESS_REFRESH_STEPS, TrainConfig
from pyrovae.training.preflight import check_training
from pyrovae.training.step import SVIStep, training_objective
from pyrovae.training.stopping import StopRequest, TrainingInterrupted

log = logging.getLogger(__name__)


def run_config(vae: VAE, data: Dataset, config: TrainConfig) -> dict[str, Any]:
    """The ``config.json`` of a run: model, data and training settings (``None`` where unknown), what data were
    read (see :mod:`pyrovae.data.sources`), and how a table's columns are encoded (``None`` for images)."""
    def as_dict(settings: Any) -> dict[str, Any] | None:
        return None if settings is None else dataclasses.asdict(settings)

    return {"model": as_dict(vae.config), "data": as_dict(data.config), "train": as_dict(config),
            "source": data.provenance, "table": None if data.schema is None else data.schema.to_json()}


@dataclasses.dataclass
class EpochState:
    """An epoch in progress, saved when training is interrupted so that it finishes exactly as it would have.

    ``sums`` holds the objective's parts summed over the ``seen`` examples, ``weight_sum`` the KL
    weights of the steps taken, ``first_bad_step`` the first non-finite step (-1: none).
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

    @classmethod
    def check_saved(cls, saved: dict[str, Any], path: Path) -> None:
        """Refuse a checkpoint's ``partial`` entry (``path``'s) unless it holds an epoch in progress, before a
        resume uses any of the checkpoint."""
        types = typing.get_type_hints(cls)
        typed = set(saved) == set(types) and all(isinstance(saved[name], kind) for name, kind in types.items())
        if not (typed and cls(**saved).consistent()):
            raise CheckpointError(f"{path} has a malformed entry 'partial' (not an epoch in progress); train again "
                                  f"or restore a copy")

    def consistent(self) -> bool:
        """Whether the tensors have their shapes and the position lies inside the epoch's order."""
        return (self.order.ndim == 1 and not self.order.is_floating_point() and self.sums.ndim == 1
                and self.weight_sum.ndim == 0 and self.first_bad_step.ndim == 0
                and 0 <= self.skipped <= self.step <= len(self.order) and 0 <= self.seen <= len(self.order))

    def add(self, parts: tuple[torch.Tensor, ...], finite: torch.Tensor, kl_weight: float | torch.Tensor,
            examples: int) -> None:
        """Count a step taken: its loss parts, its KL weight, and (on the device) whether it was finite."""
        self.first_bad_step = torch.where((self.first_bad_step < 0) & ~finite, self.step, self.first_bad_step)
        self.weight_sum += kl_weight
        self.sums += torch.stack(parts)
        self.seen += examples


def epoch_metrics(state: EpochState, objective: Any, processes: Processes = SINGLE) -> dict[str, float]:
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
        overwrite: bool = False, progress: bool = True, verbose: bool = True,
        callbacks: Sequence[Callback] = ()) -> list[dict[str, float]]:
    """Train ``vae`` on ``data.train`` by SVI; return one metrics row per epoch trained.

    ``data`` may also be images alone, a torch dataset of ``(image, label)`` pairs or an array,
    split as :func:`~pyrovae.data.datasets.from_arrays` splits them. The model and guide get each
    step's KL weight and the training set's size as ``kl_weight`` and ``data_size``.

    With ``run_dir``: ``config.json``, ``metrics.jsonl`` and ``checkpoint.pt`` after every epoch;
    ``resume=True`` continues from the checkpoint (mid-epoch if interrupted) up to
    ``config.epochs`` in all, ``overwrite=True`` replaces the run. Each step of a run happens
    once: take the directory's lock (else :class:`~pyrovae.runs.lock.RunInUse`), check the folder,
    check the inputs (:func:`~pyrovae.training.preflight.check_training`), then prepare and write.
    A run that fails before its first checkpoint removes the directory it created.

    Without resuming, the seed is set first (set it before building the VAE too). ``callbacks``
    add work at the ends of epochs. SIGINT or SIGTERM saves a checkpoint and raises
    :class:`~pyrovae.training.stopping.TrainingInterrupted`; a non-finite loss or gradient raises
    ``FloatingPointError``. Under torchrun every process calls ``fit`` alike and rank 0 alone
    writes. Global state is left as found: the TF32 flags are restored and ``compile`` lasts for
    the call only.
    """
    config = config or TrainConfig()
    data = data if isinstance(data, Dataset) else from_arrays(data)
    processes, device = join(resolve_device(config.device))
    if resume and run_dir is None:
        raise ValueError("resume=True needs the run_dir to resume from")
    if config.tensorboard and run_dir is None:
        raise ValueError("tensorboard=True writes its events into the run directory; pass run_dir=DIR")
    if config.batch_size % processes.world_size:
        raise ValueError(f"the batch size {config.batch_size} is the global batch and must divide evenly among "
                         f"{processes.world_size} processes; choose a multiple of {processes.world_size}")
    run = RunDir(run_dir) if run_dir is not None else None
    writer = RunWriter(run) if run is not None and processes.is_main else None
    with writer.writing() if writer is not None else contextlib.nullcontext():  # rank 0 alone writes the run
        if writer is not None:
            writer.check(resume, overwrite)
        vae.to(device)
        data = data.to(device)
        check_training(vae, data, config, processes)
        if data.schema is not None:  # a table: the model writes its rows back in the table's columns
            vae.schema = data.schema
            vae.likelihood.start_at(data.train.x)
        if config.elbo == "meanfield" and not vae.closed_form_kl and processes.is_main:
            log.warning("elbo='meanfield' has no closed-form KL for a flow guide or two stochastic layers: training "
                        "with the sampled KL, as elbo='trace'")
        if config.batch_size > len(data.train) and processes.is_main:
            log.warning(f"batch_size={config.batch_size} is larger than the training set ({len(data.train)} "
                        f"{'rows' if data.schema is not None else 'images'}): "
                        f"every step trains on all of them, one step per epoch")
        checkpoint = run.load_checkpoint(map_location=device) if resume else None
        if checkpoint is not None and checkpoint.progress.partial is not None:
            EpochState.check_saved(checkpoint.progress.partial, run.file(CHECKPOINT))
        if checkpoint is not None and config.epochs < checkpoint.progress.epoch:
            raise ValueError(f"epochs={config.epochs} is fewer than the {checkpoint.progress.epoch} epochs trained; "
                             f"ask for epochs={checkpoint.progress.epoch} or more")
        if writer is not None:
            writer.prepare(resume, overwrite, extra=[name for callback in callbacks for name in callback.files])
        wait_for_all(processes)
        with _tf32(config.tf32), _compiled(vae.encoder, vae.decoder, enabled=config.compile):
            return _train(vae, data, config, run, checkpoint, processes, progress, verbose, callbacks)


@contextlib.contextmanager
def _tf32(allowed: bool):
    """Let CUDA matmuls and convolutions use TensorFloat-32 while inside, if ``allowed``; restore the flags after."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if allowed:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@contextlib.contextmanager
def _compiled(*modules: torch.nn.Module, enabled: bool):
    """Run the modules' ``forward`` through ``torch.compile`` while inside, if ``enabled``; after, the modules are
    as they were (their weights, and so their state dicts, are shared throughout)."""
    for module in modules if enabled else ():
        module.forward = torch.compile(module.forward)
    try:
        yield
    finally:
        for module in modules if enabled else ():
            del module.forward  # the instance attribute set above: the class's forward shows again


def _train(vae: VAE, data: Dataset, config: TrainConfig, run: RunDir | None, checkpoint: Checkpoint | None,
           processes: Processes, progress: bool, verbose: bool, callbacks: Sequence[Callback]) -> list[dict]:
    """:func:`fit` once its input is checked and, on rank 0, the run directory locked and prepared; ``checkpoint``
    is the one resumed from."""
    pyro.clear_param_store()
    optimizer = torch.optim.Adam(vae.parameters(), lr=config.lr, fused=True)  # one kernel per step
    start = Progress(kl_weight=torch.as_tensor(config.kl_schedule.initial_weight(vae.device)))
    if checkpoint is not None:
        restore(run, checkpoint, vae, optimizer)
        start = checkpoint.progress
        ranks = checkpoint.rng.get("ranks", [])
        set_rng_state(ranks[processes.rank] if len(ranks) == processes.world_size else checkpoint.rng)
        if processes.parallel and len(ranks) != processes.world_size:  # another world size: fresh streams
            pyro.set_rng_seed(derived_seed(config.seed, start.epoch, processes.rank))
    else:
        pyro.set_rng_seed(config.seed + processes.rank)  # each process its own noise; rank 0 as when alone
    writes = run is not None and processes.is_main
    if writes:
        if checkpoint is not None:
            run.write_metrics(start.metrics)
        run.write_config(run_config(vae, data, config))
    trainer = Trainer(vae, data, config, run if writes else None, optimizer, start, processes)
    callbacks = [*_built_in_callbacks(trainer), *callbacks]
    return trainer.train_epochs(progress, verbose, callbacks)


def _built_in_callbacks(trainer: Trainer) -> list[Callback]:
    """The epoch-end work :func:`fit` always does: the metrics file and, when asked for, TensorBoard's events,
    ``best.pt`` and early stopping; without labels, the placement of the class means."""
    config, run = trainer.config, trainer.run
    callbacks: list[Callback] = [PlaceClassMeans(trainer.vae, trainer.data.train.x, config.seed)] \
        if trainer.plan.clusters else []
    if run is not None:
        callbacks.append(MetricsFile(run))
        if config.tensorboard:
            callbacks.append(TensorBoardEvents(run.path, trainer.vae, trainer.data.val, trainer.data.image_shape,
                                               config.epochs, config.tensorboard_every))
    if config.early_stop or config.keep == "best":
        callbacks.append(BestEpoch(trainer.history, run if config.keep == "best" else None, config.early_stop))
    return callbacks


class Trainer:
    """The epoch loop of :func:`fit`: take the steps, stop at a non-finite one, validate, checkpoint, call back."""

    def __init__(self, vae: VAE, data: Dataset, config: TrainConfig, run: RunDir | None,
                 optimizer: torch.optim.Optimizer, start: Progress, processes: Processes = SINGLE):
        self.vae, self.data, self.config, self.optimizer, self.run = vae, data, config, optimizer, run
        self.processes = processes
        self.objective, self.plan = training_objective(vae, data, config, config.batch_size // processes.world_size,
                                                       processes)
        self.svi_step = SVIStep(vae, optimizer, self.objective.elbo, config.skip_nonfinite > 0, processes,
                                objective=self.objective, clip_norm=config.clip_norm)
        self.kl_weight: float | torch.Tensor = start.kl_weight  # the balance goes on from it; schedules reset it
        self.epoch, self.history, self.skipped = start.epoch, list(start.metrics), start.skipped
        self.partial = None if start.partial is None else EpochState(**start.partial)
        self.stop = StopRequest()
        self.kept = "nothing was saved"
        if self.run is not None and self.run.file(CHECKPOINT).exists():
            self._kept_checkpoint(self.partial)

    def train_epochs(self, progress: bool, verbose: bool, callbacks: Sequence[Callback] = ()) -> list[dict[str, float]]:
        config, steps, trained = self.config, self.plan.steps, []
        done = steps * self.epoch + (self.partial.step if self.partial else 0)
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.stop)
            for callback in callbacks:
                stack.enter_context(callback)
            bar = stack.enter_context(tqdm(total=max(0, steps * config.epochs - done), unit="step",
                                           disable=not (progress and self.processes.is_main), dynamic_ncols=True))
            while self.epoch < config.epochs:
                epoch = self.epoch + 1
                bar.set_description(f"epoch {epoch}/{config.epochs}")
                state, self.partial = self.partial or self._start(epoch), None
                self.vae.train()
                started = time.perf_counter()
                self._train_epoch(epoch, state, bar)
                state.seconds += time.perf_counter() - started
                self._check_finite(epoch, state)
                if state.step < steps:
                    where = f"in epoch {epoch} after step {state.step} of {steps}"
                    if self.processes.parallel:  # the ranks' positions are not saved: go back to the epoch's start
                        raise TrainingInterrupted(interrupted_message(self.run, self.epoch, self.stop.requested, where,
                                                                 saved=False))
                    self._save(partial=state)
                    raise TrainingInterrupted(interrupted_message(self.run, self.epoch, self.stop.requested, where))
                self.skipped += state.skipped
                for callback in callbacks:
                    callback.epoch_trained(epoch)
                row = self._finish_epoch(epoch, state, bar, verbose and self.processes.is_main)
                for callback in callbacks:
                    callback.epoch_done(row)
                trained.append(row)
                if any(callback.stop for callback in callbacks):
                    break
                if any_rank(self.stop.requested is not None, self.processes):
                    stopped_by = self.stop.requested or "a signal (on another rank)"
                    raise TrainingInterrupted(interrupted_message(self.run, epoch, stopped_by, f"after epoch {epoch}"))
            for callback in callbacks:
                callback.training_done(trained)
        return trained

    def _start(self, epoch: int) -> EpochState:
        """A fresh epoch: the order comes from (seed, epoch), the same on every rank, then this rank's share."""
        generator = torch.Generator().manual_seed(derived_seed(self.config.seed, epoch))
        return EpochState.start(self.plan.epoch_order(generator), len(self.objective.Parts._fields))

    def _stop_requested(self, state: EpochState) -> bool:
        """Whether to stop before the next step; all ranks agree, every :data:`PROGRESS_REFRESH_STEPS` steps."""
        if not self.processes.parallel:
            return self.stop.requested is not None
        return state.step % PROGRESS_REFRESH_STEPS == 0 and any_rank(self.stop.requested is not None, self.processes)

    def _train_epoch(self, epoch: int, state: EpochState, bar: tqdm) -> None:
        """Take the steps of the epoch left in ``state``, setting the KL weight before each; return early (before
        drawing the next batch, which consumes random numbers) on a stop or past ``skip_nonfinite``."""
        schedule, svi_step, steps = self.config.kl_schedule, self.svi_step, self.plan.steps
        budget = self.config.skip_nonfinite - self.skipped
        if self._stop_requested(state):
            return
        for batch in self.plan.batches(state.order, first=state.step):
            if not schedule.balanced:
                self.kl_weight = schedule.scheduled_weight(epoch - 1 + state.step / steps)
            weight = self.kl_weight
            try:
                parts, finite = svi_step(*batch, kl_weight=weight)
            except (RuntimeError, MemoryError) as error:
                if not is_out_of_memory(error):
                    raise
                raise OutOfMemory(out_of_memory_message(self.run, self.config, self.kept, epoch, state.step + 1,
                                                        steps), LOWER_WHEN_OUT_OF_MEMORY) from None
            state.step += 1
            bar.update()
            images = self.plan.examples(batch)
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
        skipped = self.skipped + state.skipped
        if skipped > self.config.skip_nonfinite:
            raise FloatingPointError(nonfinite_message(epoch, state.step, self.plan.steps, self.config, self.kept) +
                                     f" ({skipped} bad batches so far, more than "
                                     f"skip_nonfinite={self.config.skip_nonfinite})")
        first_bad = int(state.first_bad_step)
        if first_bad >= 0:
            raise FloatingPointError(nonfinite_message(epoch, first_bad, self.plan.steps, self.config, self.kept))

    def _finish_epoch(self, epoch: int, state: EpochState, bar: tqdm, verbose: bool) -> dict[str, float]:
        train = epoch_metrics(state, self.objective, self.processes)
        row = {"epoch": epoch, **train, "val_neg_elbo": self.objective.validation_loss(self.data.val, self.processes),
               "epoch_seconds": state.seconds}
        self.epoch = epoch
        self.history.append(row)
        bar.set_postfix(loss=f"{train['train_loss']:.2f}", val=f"{row['val_neg_elbo']:.2f}")
        if verbose and (bar.disable or epoch % max(1, self.config.epochs // 10) == 0 or epoch == self.config.epochs):
            bar.write(f"epoch {epoch:>4}  train loss {train['train_loss']:9.3f} ({self.objective.summary(train)}, "
                      f"w {train['kl_weight']:.3g})  val -ELBO {row['val_neg_elbo']:9.3f}  ({state.seconds:.2f}s)")
        self._save(partial=None)
        return row

    def _save(self, partial: EpochState | None) -> None:
        """Checkpoint the state (the metrics history goes with it, so a resume can rewrite metrics.jsonl).

        Every rank takes part: the random states of all ranks are gathered to rank 0, which writes.
        """
        ranks = gather_objects(rng_state(), self.processes)
        if self.run is None:
            return
        progress = Progress(kl_weight=torch.as_tensor(self.kl_weight), epoch=self.epoch, metrics=self.history,
                            skipped=self.skipped, partial=None if partial is None else dataclasses.asdict(partial))
        self.run.save_checkpoint(Checkpoint(model=self.vae.state_dict(), optimizer=self.optimizer.state_dict(),
                                            rng={**ranks[0], "ranks": ranks} if self.processes.parallel else ranks[0],
                                            progress=progress))
        self._kept_checkpoint(partial)

    def _kept_checkpoint(self, partial: EpochState | None) -> None:
        where = f"epoch {self.epoch}" if partial is None else f"step {partial.step} of epoch {self.epoch + 1}"
        self.kept = f"{self.run.file(CHECKPOINT)} still holds the state after {where}"


def out_of_memory_message(run: RunDir | None, config: TrainConfig, kept: str, epoch: int, step: int,
                          steps: int) -> str:
    """Where memory ran out, what was kept, and which settings to lower."""
    resume = f"; continue with resume=True and run_dir='{run.path}'" if run is not None else ""
    return (f"out of memory at epoch {epoch}, step {step} of {steps} (batch_size={config.batch_size}, "
            f"particles={config.particles}); {kept}. Lower {', '.join(LOWER_WHEN_OUT_OF_MEMORY[:-1])} or "
            f"{LOWER_WHEN_OUT_OF_MEMORY[-1]}{resume}")


def interrupted_message(run: RunDir | None, epochs_done: int, signal_name: str, where: str,
                        saved: bool = True) -> str:
    """Which signal stopped training where, what the checkpoint holds, and how to continue."""
    if run is None:
        return f"{signal_name} received: training stopped {where}"
    what = (f"saved {run.file(CHECKPOINT)}" if saved
            else f"{run.file(CHECKPOINT)} holds epoch {epochs_done}, where a resume starts")
    return (f"{signal_name} received: training stopped {where}; {what}; continue it with resume=True "
            f"and run_dir='{run.path}'")
