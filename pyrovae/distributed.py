"""Data parallelism on PyTorch's own engine: DDP processes launched by ``torchrun``.

:func:`join` joins the process group that torchrun describes in the environment (``gloo`` on CPUs, ``nccl``
on GPUs, one GPU per process); without torchrun there is one process and nothing here communicates. Every rank
holds the whole dataset and trains on a disjoint shard of each epoch's order (:func:`shard`); DDP all-reduces
the gradients. Evaluation deals out blocks of examples (:func:`my_blocks`) and gathers the results.
"""

from __future__ import annotations

import atexit
import dataclasses
import gc
import inspect
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclasses.dataclass(frozen=True)
class Processes:
    """This process's place among the data-parallel workers (rank 0 of 1 when alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, metrics, pictures and prints."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        """More than one process: DDP wraps the objective and results are all-reduced."""
        return self.world_size > 1


SINGLE = Processes()


def join(device: torch.device) -> tuple[Processes, torch.device]:
    """Join torchrun's process group; return this rank and its device (a CUDA rank's is its local rank's GPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return SINGLE, device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_leave)
    return Processes(dist.get_rank(), dist.get_world_size(), local_rank), device


def data_parallel(module: nn.Module) -> DistributedDataParallel:
    """``module`` in DDP, which averages the gradients over the ranks; its buffers are constants (the standard
    prior's zero mean, a fixed likelihood scale), so they are not broadcast before every forward pass."""
    device = next(module.parameters()).device
    # Newer torch renamed broadcast_buffers (and warns about the old name); older versions know only that one.
    no_buffer_sync = ({"forward_sync_buffers": False}
                      if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                      else {"broadcast_buffers": False})
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None, **no_buffer_sync)


def _leave() -> None:
    """Leave the process group before the interpreter shuts down (gloo's threads abort the process otherwise)."""
    if dist.is_initialized():
        gc.collect()  # a finished DDP wrapper (in reference cycles) lets go of the group first
        dist.destroy_process_group()


def shard(order: torch.Tensor, processes: Processes) -> torch.Tensor:
    """This rank's share of an epoch's order: every ``world_size``-th index from its rank on, after padding the
    order with its head so that all ranks take equally many examples (as torch's DistributedSampler does)."""
    if not processes.parallel:
        return order
    pad = -len(order) % processes.world_size
    order = torch.cat([order, order[:pad]]) if pad else order
    return order[processes.rank::processes.world_size]


def all_reduce_sum(tensor: torch.Tensor, processes: Processes) -> torch.Tensor:
    """The sum of ``tensor`` over all ranks (in place; unchanged when alone)."""
    if processes.parallel:
        dist.all_reduce(tensor)
    return tensor


def any_rank(flag: bool, processes: Processes) -> bool:
    """Whether ``flag`` is true on some rank (every rank gets the same answer)."""
    if not processes.parallel:
        return flag
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    return bool(all_reduce_sum(torch.tensor(float(flag), device=backend_device), processes) > 0)


def my_blocks(num_blocks: int, processes: Processes) -> range:
    """The blocks of an evaluation this rank computes: every ``world_size``-th, from its rank on."""
    return range(processes.rank, num_blocks, processes.world_size)


def gather_objects(value: object, processes: Processes) -> list[object]:
    """``value`` from every rank, in rank order (small Python objects, e.g. RNG states)."""
    if not processes.parallel:
        return [value]
    values: list[object] = [None] * processes.world_size
    dist.all_gather_object(values, value)
    return values


def from_main(value: object, processes: Processes) -> object:
    """Rank 0's ``value`` on every rank (e.g. the run directory's timestamped name)."""
    if not processes.parallel:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wait_for_all(processes: Processes) -> None:
    """A barrier: return once every rank got here (no-op when alone)."""
    if processes.parallel:
        dist.barrier()
