"""Will it fit? Checks made before any training work, memory estimates among them.

A model is first sized by formula (:func:`~pyrovae.model.build.check_fits`, so ``z_dim=10**9`` is refused in
microseconds), then :func:`model_bytes` counts its parameters on PyTorch's ``meta`` device, which allocates
nothing; a step's peak is extrapolated from two small probes (:func:`~pyrovae.memory.peak_at`). A setting that
cannot fit in the device's free memory is refused by :class:`~pyrovae.memory.TooBig`, naming the setting furthest
above its default.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from pyrovae.data.datasets import Dataset, as_floats
from pyrovae.data.label_mix import visible_labels
from pyrovae.data.streaming import StreamedSplit
from pyrovae.distributed import SINGLE, Processes
from pyrovae.inference.evaluate import evaluating
from pyrovae.inference.semi_supervised import learns_from_few_labels
from pyrovae.memory import TooBig, free_bytes, in_bytes, parameter_bytes, peak_at, where
from pyrovae.model.build import build_vae, check_fits
from pyrovae.model.config import ModelConfig
from pyrovae.model.size import SIZE_DEFAULTS, largest, model_sizes, refuse_beyond
from pyrovae.model.vae import VAE
from pyrovae.settings import SettingError
from pyrovae.training.config import TrainConfig
from pyrovae.training.step import training_objective

log = logging.getLogger(__name__)

TRAINING_COPIES = 4
"""Copies of every parameter that training holds: the weights, their gradients, Adam's two moments."""
TRAINING_PARTS = "for the weights, their gradients and Adam's moments"


def model_bytes(config: ModelConfig) -> int:
    """The bytes training holds for the parameters of the model ``config`` describes (weights, gradients, Adam)."""
    with torch.device("meta"):  # shapes only: no storage is allocated
        vae = build_vae(config)
    return TRAINING_COPIES * parameter_bytes(vae)


def check_model_fits(config: ModelConfig, device: torch.device) -> None:
    """Refuse a model whose parameters cannot be trained in ``device``'s free memory, before building it: by
    formula, then counted exactly."""
    check_fits(config, device, TRAINING_COPIES, TRAINING_PARTS)
    refuse_beyond(config, model_bytes(config), device, TRAINING_PARTS)


ADAM_MOMENTS = 2
"""Tensors of a parameter's size that Adam keeps: the running means of the gradient and of its square."""


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
    """Refuse, before any work, images outside the likelihood's support, bad labels, settings that hidden labels
    cannot honour, and steps that do not fit in memory."""
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


def step_bytes(vae: VAE, data: Dataset, config: TrainConfig, batch_size: int) -> float:
    """About the bytes (gradients and activations) one step of ``batch_size`` examples allocates, scaled from probes
    of a few examples and at most two particles that change no parameter and leave the caller's random streams alone."""
    probe_particles = min(config.particles, 2)
    probe_config = dataclasses.replace(config, particles=probe_particles)

    def step(examples: int) -> None:
        objective, plan = training_objective(vae, data, probe_config, examples)
        order = plan.epoch_order(torch.Generator().manual_seed(0))
        objective(*next(plan.batches(order)))[0].backward()

    with torch.random.fork_rng(devices=[vae.device] if vae.device.type == "cuda" else []), evaluating(vae):
        needed = peak_at(step, batch_size * config.particles / probe_particles)
    vae.zero_grad(set_to_none=True)
    return needed


def check_step_fits(vae: VAE, data: Dataset, config: TrainConfig, processes: Processes = SINGLE) -> None:
    """Refuse training settings whose steps (:func:`step_bytes`) and Adam's moments cannot fit in free memory."""
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
