"""The weight w of the KL term during training: beta, linear warm-up, or automatic balance.

The objective is E_q[-log p(x|z)] + w KL(q(z|x) || p(z)); w = 1 is the ELBO. The model
and guide apply w with ``poutine.scale`` on the latent site (see :class:`~pyrovae.vae.VAE`),
and :func:`~pyrovae.train.fit` sets it before every step from a :class:`KLSchedule`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from pyrovae.settings import SettingError

MIN_KL_WEIGHT = 1e-6
"""The smallest weight applied: ``poutine.scale`` needs a positive scale, and 1e-6 of the
KL term is nothing for all practical purposes (it stands for w = 0)."""


@dataclasses.dataclass
class KLSchedule:
    """How w evolves.

    - ``beta``: a constant weight (the beta of seed 001's lecture notes).
    - ``warmup_epochs``: w rises linearly from 0 to ``beta`` over that many epochs,
      step by step (Bowman et al. 2015).
    - ``balance_rate`` alpha: w starts at 0 and after every batch
      w += alpha * (RE - w * DE), with RE and DE the batch's reconstruction and KL terms
      per example (seed 004), so that w * DE is driven towards RE.
    """

    beta: float = 1.0
    warmup_epochs: float = 0.0
    balance_rate: float | None = None

    def __post_init__(self) -> None:
        check_kl_settings(self.beta, self.warmup_epochs, self.balance_rate)

    @property
    def balanced(self) -> bool:
        return self.balance_rate is not None

    def initial_weight(self, device: torch.device | str = "cpu") -> float | torch.Tensor:
        """w before the first step (a device tensor when balanced, so updates need no host sync)."""
        if self.balanced:
            return torch.tensor(MIN_KL_WEIGHT, device=device)
        return self.scheduled_weight(0.0)

    def scheduled_weight(self, epochs_done: float) -> float:
        """w after ``epochs_done`` (fractional) epochs of a constant or warm-up schedule."""
        if self.warmup_epochs:
            return max(MIN_KL_WEIGHT, self.beta * min(1.0, epochs_done / self.warmup_epochs))
        return self.beta

    def balance(self, weight: torch.Tensor, recon: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        """Seed 004's update w + alpha (RE - w DE), kept at least :data:`MIN_KL_WEIGHT`."""
        return (weight + self.balance_rate * (recon - weight * kl)).clamp(min=MIN_KL_WEIGHT)


def check_kl_settings(weight: float, warmup: float, balance: float | None,
                      names: Sequence[str] = ("beta", "warmup_epochs", "balance_rate")) -> None:
    """Raise :class:`~pyrovae.settings.SettingError` unless the KL weight, warm-up and balance rate make a schedule.

    ``names`` are what the caller calls the three settings (:class:`~pyrovae.train.TrainConfig`
    calls them ``kl_weight``, ``kl_warmup`` and ``kl_balance``), so messages name the caller's.
    """
    weight_name, warmup_name, balance_name = names
    if not weight > 0:
        raise SettingError(weight_name, f"{weight_name} must be positive, got {weight}")
    if warmup < 0:
        raise SettingError(warmup_name, f"{warmup_name} must be a non-negative number of epochs, got {warmup}")
    if balance is not None:
        if not balance > 0:
            raise SettingError(balance_name, f"{balance_name} must be positive, got {balance}")
        if warmup or weight != 1:
            fixed = [f"{name}={value:g}" for name, value, given in ((weight_name, weight, weight != 1),
                                                                      (warmup_name, warmup, warmup != 0)) if given]
            raise SettingError(balance_name, f"{balance_name} sets the weight itself; use it without "
                                             f"{' or '.join(fixed)}")
