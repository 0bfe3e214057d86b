"""Gradient averaging through shared memory, for the CPU processes of one machine under DDP.

With gloo, DDP's all-reduce sends every gradient bucket through loopback sockets: for the
2.7 MB of the default VAE, 2 to 3 ms of each step on 2 cores, which have no core to spare
for overlapping it. Processes on one machine can instead map the same file in ``/dev/shm``.
:func:`average_through_shared_memory` is a DDP communication hook (PyTorch's extension
point for how buckets are reduced): each process copies its bucket into its own row of a shared
``(2, W, P)`` tensor, waits at a barrier, and sums the W rows in rank order (the same
arithmetic on every rank, so the replicas stay identical), then divides by W. The two
halves alternate from step to step: a process that starts the next step's copy never
overwrites a row that another is still reading, because both passed a barrier since.
"""

import os
import uuid
from pathlib import Path

import torch
import torch.distributed as dist

# No ``from __future__ import annotations`` here: DDP checks the hook's annotations as objects.

SHARED_FOLDER = "/dev/shm"
"""A memory-backed file system (Linux); without it, or without room, DDP keeps gloo's all-reduce."""

MAX_PROCESSES = 8
"""Every rank reads all W rows, so the memory traffic grows as W^2; beyond this, gloo's ring is kept."""


class SharedRows:
    """The hook's state: the shared ``(2, W, P)`` tensor, this rank's row, and where the next bucket goes."""

    def __init__(self, rows: torch.Tensor, rank: int):
        self.rows = rows
        self.rank = rank
        self.step = 0
        self.offset = 0  # DDP reduces a step's buckets in order, one after another


def average_through_shared_memory(state: SharedRows, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """A DDP communication hook: the mean of every rank's gradient bucket, through the shared rows."""
    gradients = bucket.buffer()
    rows = state.rows[state.step % 2, :, state.offset:state.offset + gradients.numel()]
    rows[state.rank].copy_(gradients)
    dist.barrier()  # every rank's bucket is in place
    gradients.copy_(rows[0])
    for row in rows[1:]:
        gradients.add_(row)
    gradients.div_(len(rows))
    state.offset += gradients.numel()
    if bucket.is_last():
        state.step, state.offset = state.step + 1, 0
    averaged: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    averaged.set_result(gradients)
    return averaged


def shared_rows(parameters: list[torch.Tensor], rank: int, world_size: int) -> SharedRows | None:
    """The state of :func:`average_through_shared_memory` for these parameters, or ``None`` where
    the ranks cannot share memory.

    A collective call over a gloo group, with CPU parameters. Rank 0 creates and reserves
    the file (so a full ``/dev/shm`` fails here, not later with a bus error); every rank
    maps it if it can see it. If any rank cannot (another machine, no room, mixed dtypes),
    none uses it; nor do more than :data:`MAX_PROCESSES`. The file's name is removed once
    all have mapped it, so nothing is left behind.
    """
    if world_size > MAX_PROCESSES:
        return None
    dtypes = {p.dtype for p in parameters}
    dtype = dtypes.pop() if len(dtypes) == 1 else None
    numel = 2 * world_size * sum(p.numel() for p in parameters)
    size = numel * (dtype.itemsize if dtype else 0)
    path = [None]
    if rank == 0 and dtype is not None and os.path.isdir(SHARED_FOLDER) and hasattr(os, "posix_fallocate"):
        path[0] = os.path.join(SHARED_FOLDER, f"pyrovae-gradients-{uuid.uuid4().hex}")
        try:
            with open(path[0], "wb") as file:
                os.posix_fallocate(file.fileno(), 0, size)
        except OSError:  # no room (or no such file system): gloo it is
            Path(path[0]).unlink(missing_ok=True)
            path[0] = None
    dist.broadcast_object_list(path)
    rows = None
    if path[0] is not None and os.path.isfile(path[0]) and os.path.getsize(path[0]) == size:
        rows = torch.from_file(path[0], shared=True, size=numel, dtype=dtype)
    all_mapped = torch.tensor(float(rows is not None))
    dist.all_reduce(all_mapped, op=dist.ReduceOp.MIN)
    if rank == 0 and path[0] is not None:
        os.unlink(path[0])
    if not all_mapped:
        return None
    return SharedRows(rows.view(2, world_size, -1), rank)
