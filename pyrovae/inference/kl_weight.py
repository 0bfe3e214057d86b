"""The weight w of the KL term during training: beta, linear warm-up, or automatic balance.

The objective is E_q[-log p(x|z)] + w KL(q(z|x) || p(z)); w = 1 is the ELBO. The VAE applies w with
``poutine.scale`` on the latent site; :func:`~pyrovae.training.loop.fit` sets it before every step.
"""

from __future__ import annotations

import dataclasses

import torch

from pyrovae.settings import SettingError

MIN_KL_WEIGHT = 1e-6
"""The smallest weight applied, standing for w = 0: ``poutine.scale`` needs a positive scale."""


@dataclasses.dataclass
class KLSchedule:
    """How w evolves; :class:`~pyrovae.training.config.TrainConfig` declares the three settings.

    - ``kl_weight``: a constant weight, the beta of Higgins et al. (2017).
    - ``kl_warmup``: w rises linearly from 0 to ``kl_weight`` over that many epochs (Bowman et al. 2015).
    - ``kl_balance`` alpha: w starts at 0 and after every batch w += alpha * (RE - w * DE), RE and DE the
      reconstruction and KL terms per example (Verduzco 2023), driving w * DE towards RE.
    """

    kl_weight: float
    kl_warmup: float
    kl_balance: float | None

    def __post_init__(self) -> None:
        if not self.kl_weight > 0:
            raise SettingError("kl_weight", f"kl_weight must be positive, got {self.kl_weight}")
        if self.kl_warmup < 0:
            raise SettingError("kl_warmup", f"kl_warmup must be a non-negative number of epochs, got {self.kl_warmup}")
        if self.balanced:
            if not self.kl_balance > 0:
                raise SettingError("kl_balance", f"kl_balance must be positive, got {self.kl_balance}")
            if self.kl_warmup or self.kl_weight != 1:
                fixed = [f"{name}={value:g}" for name, value, given in (
                    ("kl_weight", self.kl_weight, self.kl_weight != 1), ("kl_warmup", self.kl_warmup, self.kl_warmup))
                    if given]
                raise SettingError("kl_balance", f"kl_balance sets the weight itself; use it without "
                                                 f"{' or '.join(fixed)}")

    @property
    def balanced(self) -> bool:
        return self.kl_balance is not None

    def initial_weight(self, device: torch.device | str = "cpu") -> float | torch.Tensor:
        """w before the first step (a device tensor when balanced, so updates need no host sync)."""
        if self.balanced:
            return torch.tensor(MIN_KL_WEIGHT, device=device)
        return self.scheduled_weight(0.0)

    def scheduled_weight(self, epochs_done: float) -> float:
        """w after ``epochs_done`` (fractional) epochs of a constant or warm-up schedule."""
        if self.kl_warmup:
            return max(MIN_KL_WEIGHT, self.kl_weight * min(1.0, epochs_done / self.kl_warmup))
        return self.kl_weight

    def balance(self, weight: torch.Tensor, recon: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        """Verduzco's update w + alpha (RE - w DE), kept at least :data:`MIN_KL_WEIGHT`."""
        return (weight + self.kl_balance * (recon - weight * kl)).clamp(min=MIN_KL_WEIGHT)
