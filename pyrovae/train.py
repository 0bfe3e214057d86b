"""Training: stochastic variational inference with a torch optimizer over the VAE's parameters.

Each step minimizes the ELBO estimate of ``Trace_ELBO`` (Monte Carlo KL) or
``TraceMeanField_ELBO`` (closed-form KL, seed 000 eq. 4) with Adam, through the
device-resident versions in :mod:`pyrovae.objectives`. The loss is accumulated on the
device and read back once per epoch, so a GPU is never made to wait for the host
inside an epoch.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer.util import is_validation_enabled
from tqdm.auto import tqdm

from pyrovae.data import Dataset
from pyrovae.evaluate import negative_elbo
from pyrovae.kl_weight import KLSchedule
from pyrovae.objectives import ELBOParts, IWAEBound, MeanFieldELBO, TraceELBO
from pyrovae.randomness import rng_state, set_rng_state
from pyrovae.runs import CHECKPOINT, RunDir
from pyrovae.vae import VAE

ELBOS = {"trace": TraceELBO, "meanfield": MeanFieldELBO, "iwae": IWAEBound}
DEVICES = ("auto", "cpu", "cuda")
PROGRESS_REFRESH_STEPS = 50
"""Steps between updates of the progress bar's running loss (each one reads the loss from the device)."""


@dataclasses.dataclass
class TrainConfig:
    """Optimization settings (saved in ``config.json``). ``epochs`` counts from the run's start.

    ``elbo`` is ``trace``, ``meanfield`` or ``iwae``, estimated with ``particles``
    vectorized samples per example (averaged, or importance-weighted for ``iwae``).
    ``kl_weight``, ``kl_warmup`` (epochs) and ``kl_balance`` (a rate) set the weight of
    the KL term; see :class:`~pyrovae.kl_weight.KLSchedule`.
    """

    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    elbo: str = "trace"
    device: str = "auto"
    seed: int = 0
    kl_weight: float = 1.0
    kl_warmup: float = 0.0
    kl_balance: float | None = None
    particles: int = 1

    def __post_init__(self) -> None:
        if self.elbo not in ELBOS:
            raise ValueError(f"unknown elbo {self.elbo!r}; choose one of {', '.join(ELBOS)}")
        if self.epochs < 1 or self.batch_size < 1 or self.particles < 1:
            raise ValueError(f"epochs, batch_size and particles must be positive, got {self.epochs}, "
                             f"{self.batch_size} and {self.particles}")
        if not self.lr > 0:
            raise ValueError(f"the learning rate must be positive, got {self.lr}")
        resolve_device(self.device)
        KLSchedule(self.kl_weight, self.kl_warmup, self.kl_balance)  # raises on bad KL settings

    @property
    def kl_schedule(self) -> KLSchedule:
        return KLSchedule(self.kl_weight, self.kl_warmup, self.kl_balance)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; asking for CUDA without one is an error."""
    if name not in DEVICES:
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


class SVIStep:
    """One optimizer step on a minibatch's (KL-weighted) negative ELBO; returns its detached parts.

    Pyro checks the model and guide (shapes, supports, plate structure) on the first
    step; the structure is static, so later steps skip those checks.
    """

    def __init__(self, vae: VAE, optimizer: torch.optim.Optimizer, elbo: pyro.infer.ELBO):
        self.vae, self.optimizer, self.elbo = vae, optimizer, elbo
        self.checked = False

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> ELBOParts:
        with pyro.validation_enabled(is_validation_enabled() and not self.checked):
            parts = self.elbo.loss_and_parts(self.vae.model, self.vae.guide, x, y)
        self.checked = True
        self.optimizer.zero_grad(set_to_none=True)
        parts.loss.backward()
        self.optimizer.step()
        return parts._replace(loss=parts.loss.detach())


def run_config(vae: VAE, data: Dataset, config: TrainConfig) -> dict[str, Any]:
    """The ``config.json`` of a run: model, data and training settings (``None`` where unknown)."""
    def as_dict(settings: Any) -> dict[str, Any] | None:
        return None if settings is None else dataclasses.asdict(settings)

    return {"model": as_dict(vae.config), "data": as_dict(data.config), "train": as_dict(config)}


def train_epoch(svi_step: SVIStep, data: Dataset, config: TrainConfig, epoch: int, bar: tqdm) -> dict[str, float]:
    """One pass over the shuffled training set, setting the KL weight before every step.

    Returns the per-example means of the loss and of its reconstruction and KL terms,
    and the mean KL weight, read from the device once at the end.
    """
    vae, schedule = svi_step.vae, config.kl_schedule
    steps = -(-len(data.train) // config.batch_size)
    sums = torch.zeros(3, device=data.train.x.device)  # loss, recon, kl
    weight_sum = 0.0
    seen = 0
    for step, (x, y) in enumerate(data.batches(config.batch_size)):
        if not schedule.balanced:
            vae.kl_weight = schedule.scheduled_weight(epoch - 1 + step / steps)
        weight_sum = weight_sum + vae.kl_weight
        parts = svi_step(x, y)
        sums += torch.stack(parts)
        if schedule.balanced:
            vae.kl_weight = schedule.balance(vae.kl_weight, parts.recon / len(x), parts.kl / len(x))
        seen += len(x)
        bar.update()
        if not bar.disable and (step + 1) % PROGRESS_REFRESH_STEPS == 0:
            bar.set_postfix(loss=f"{sums[0].item() / seen:.2f}")
    loss, recon, kl = (sums / seen).tolist()
    return {"train_loss": loss, "recon": recon, "kl": kl, "kl_weight": float(weight_sum / steps)}


def fit(vae: VAE, data: Dataset, config: TrainConfig | None = None, run_dir: str | Path | None = None,
        resume: bool = False, progress: bool = True) -> list[dict[str, float]]:
    """Train ``vae`` on ``data.train`` by SVI; return one metrics row per epoch trained.

    With ``run_dir``, writes ``config.json``, appends to ``metrics.jsonl`` and saves
    ``checkpoint.pt`` after every epoch; ``resume=True`` continues from that checkpoint
    up to ``config.epochs`` in all. Without resuming, the seed is set first (set it
    before building the VAE too, for a reproducible initialization). Pyro's global
    param store is cleared: the parameters live in ``vae`` and Adam updates them there.
    """
    config = config or TrainConfig()
    device = resolve_device(config.device)
    if resume and run_dir is None:
        raise ValueError("resume=True needs the run_dir to resume from")
    run = RunDir(run_dir).create() if run_dir is not None else None
    if run is not None and not resume and run.file(CHECKPOINT).exists():
        raise ValueError(f"{run.path} already holds a trained run; pass --resume (resume=True) "
                         f"to continue it, or choose another --out directory")
    vae.to(device)
    data = data.to(device)
    vae.check_data(data.observed_train_images(), "training images")
    vae.check_data(data.val.x, "validation images")
    for split, name in ((data.train, "training"), (data.val, "validation")):
        vae.check_labels(split.y, f"{name} labels")

    pyro.clear_param_store()
    optimizer = torch.optim.Adam(vae.parameters(), lr=config.lr, fused=True)  # one kernel per step
    vae.kl_weight = config.kl_schedule.initial_weight(device)
    start_epoch = 0
    if resume:
        state = run.load_checkpoint(map_location=device)
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"]
        set_rng_state(state["rng"])
        if config.kl_schedule.balanced:
            vae.kl_weight = state["kl_weight"].to(device)
        run.truncate_metrics(start_epoch)
    else:
        pyro.set_rng_seed(config.seed)
    if run is not None:
        run.write_config(run_config(vae, data, config))

    try:
        return _train_epochs(vae, data, config, run, optimizer, start_epoch, progress)
    finally:
        vae.kl_weight = 1.0  # the weight is a training device; the trained VAE is the plain model


def _train_epochs(vae: VAE, data: Dataset, config: TrainConfig, run: RunDir | None,
                  optimizer: torch.optim.Optimizer, start_epoch: int, progress: bool) -> list[dict[str, float]]:
    """The epoch loop of :func:`fit`: train, validate, log, checkpoint."""
    elbo = ELBOS[config.elbo](num_particles=config.particles, vectorize_particles=config.particles > 1,
                              max_plate_nesting=1)  # the data plate; particles go left of it
    svi_step = SVIStep(vae, optimizer, elbo)
    steps_per_epoch = -(-len(data.train) // config.batch_size)
    history = []
    with tqdm(total=steps_per_epoch * max(0, config.epochs - start_epoch), disable=not progress,
              unit="step", dynamic_ncols=True) as bar:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            bar.set_description(f"epoch {epoch}/{config.epochs}")
            vae.train()
            started = time.perf_counter()
            train = train_epoch(svi_step, data, config, epoch, bar)
            epoch_seconds = time.perf_counter() - started
            train_loss = train["train_loss"]
            if not math.isfinite(train_loss):
                kept = (f" ({run.file(CHECKPOINT)} still holds epoch {epoch - 1})"
                        if run is not None and epoch > 1 else "")
                raise FloatingPointError(f"training diverged: epoch {epoch} ended with loss {train_loss} "
                                         f"and was not saved{kept}; lower --lr or check the data")
            row = {"epoch": epoch, **train,
                   "val_neg_elbo": negative_elbo(vae, data.val.x, data.val.y).mean().item(),
                   "epoch_seconds": epoch_seconds}
            history.append(row)
            bar.set_postfix(loss=f"{train_loss:.2f}", val=f"{row['val_neg_elbo']:.2f}")
            if progress:
                bar.write(f"epoch {epoch:>4}  train loss {train_loss:9.3f} (recon {train['recon']:.2f}, "
                          f"KL {train['kl']:.2f}, w {train['kl_weight']:.3g})  "
                          f"val -ELBO {row['val_neg_elbo']:9.3f}  ({epoch_seconds:.2f}s)")
            if run is not None:
                run.append_metrics(row)
                run.save_checkpoint({"model": vae.state_dict(), "optimizer": optimizer.state_dict(),
                                     "epoch": epoch, "rng": rng_state(),
                                     "kl_weight": torch.as_tensor(vae.kl_weight)})
    return history
