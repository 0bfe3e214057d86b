"""The weight w of the KL term during training: beta, linear warm-up, or automatic balance.

The objective is E_q[-log p(x|z)] + w KL(q(z|x) || p(z)); w = 1 is the ELBO. The model
and guide apply w with ``poutine.scale`` on the latent site (see :class:`~pyrovae.vae.VAE`),
and :func:`~pyrovae.train.fit` sets it before every step from a :class:`KLSchedule`.
"""

from __future__ import annotations

import dataclasses

import torch

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
        if not self.beta > 0:
            raise ValueError(f"the KL weight must be positive, got {self.beta}")
        if self.warmup_epochs < 0:
            raise ValueError(f"the KL warm-up must be a non-negative number of epochs, got {self.warmup_epochs}")
        if self.balance_rate is not None:
            if not self.balance_rate > 0:
                raise ValueError(f"the KL balance rate must be positive, got {self.balance_rate}")
            if self.warmup_epochs or self.beta != 1:
                raise ValueError("the KL balance sets the weight itself; use it without a KL weight or warm-up")

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
