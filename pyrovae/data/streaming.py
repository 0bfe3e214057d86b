"""Training images streamed from their files batch by batch, for datasets larger than memory.

A :class:`StreamedSplit` reads each minibatch with DataLoader workers in the order training asks for, so it trains
exactly as an in-memory split would. :func:`streams` chooses the storage.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any, Literal, get_args

import torch
from torch.utils.data import DataLoader, Dataset

from pyrovae.memory import TooBig, in_bytes
from pyrovae.settings import SettingError

log = logging.getLogger(__name__)

Storage = Literal["auto", "memory", "stream"]
STORAGE = get_args(Storage)
MEMORY_SHARE = 0.5
"""The share of the free memory that training images may take in memory when no limit is set."""


def default_workers() -> int:
    """One DataLoader worker per spare core, at most four: one on a 2-core machine."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


@dataclasses.dataclass
class StreamedSplit:
    """Training images read batch by batch from ``examples``, with their labels ``y`` kept in memory."""

    examples: Dataset
    y: torch.Tensor
    workers: int = dataclasses.field(default_factory=default_workers)
    device: torch.device = torch.device("cpu")
    origin: str = "their files"

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> StreamedSplit:
        return dataclasses.replace(self, y=self.y.to(device), device=torch.device(device))

    def read(self, batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The flattened images of every index in ``batches``, read ahead by the workers, on :attr:`device`."""
        loader = DataLoader(self.examples, batch_sampler=[index.tolist() for index in batches],
                            num_workers=self.workers, collate_fn=stack_images, pin_memory=self.device.type == "cuda",
                            generator=torch.Generator())  # its workers' seeds: not drawn from training's stream
        for x in loader:
            yield x.to(self.device, non_blocking=True).reshape(len(x), -1)

    def storage(self) -> str:
        return f"streamed from {self.origin} batch by batch by {readers(self.workers)}"


def readers(workers: int) -> str:
    return f"{workers} DataLoader worker{'s' * (workers != 1)}" if workers else "the main process"


def stack_images(pairs: list[tuple[torch.Tensor, Any]]) -> torch.Tensor:
    """A batch of images from ``(image, label)`` pairs."""
    return torch.stack([image for image, _ in pairs])


def streams(storage: Storage, needed: float, limit: float, free: float, streamable: bool, workers: int) -> bool:
    """Whether to stream training images of ``needed`` bytes: as ``storage`` says, or with ``"auto"`` above
    ``limit``."""
    if storage == "stream" and not streamable:
        raise SettingError("storage", "storage='stream' reads uint8 images from a folder of images or a .npy file, "
                                      "and these data are held in memory; use storage='memory' or 'auto'")
    if storage == "stream" or (storage == "auto" and streamable and needed > limit):
        if storage == "auto":
            log.warning(f"the training images take {in_bytes(needed)} as uint8 pixels, more than the in-memory limit "
                        f"of {in_bytes(limit)} (memory_limit): streaming them batch by batch, read by "
                        f"{readers(workers)}")
        return True
    if needed > free:
        how = ("save them as uint8 images in a folder or a uint8 .npy file to stream them" if not streamable
               else "use storage='stream'")
        raise TooBig("storage", f"the training images take {in_bytes(needed)} in memory, and this machine has "
                                f"{in_bytes(free)} free; {how}, or lower image_size")
    return False

