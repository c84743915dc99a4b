"""torch.distributed for the commands torchrun launches: the process group, each rank's shard of a set, and
the gathering of the shards (no home-made launcher: ``torchrun --nproc-per-node N -m eclipse ...``).

A single process (no ``WORLD_SIZE`` in the environment, or 1) is world 1: every helper is then a no-op, so a
command has one code path. The backend is NCCL on CUDA and gloo on CPU (which the tests use, 2 processes).
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of this process as torchrun sets them; (0, 1) outside torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def rank_device(device: torch.device) -> torch.device:
    """A CUDA device without an index becomes this rank's GPU (``LOCAL_RANK``); others are unchanged."""
    if device.type == "cuda" and device.index is None and world()[1] > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


@contextmanager
def process_group(device: torch.device):
    """The default process group for the life of a command (when torchrun started several processes)."""
    rank, size = world()
    if size == 1 or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def shard(n: int, rank: int | None = None, size: int | None = None) -> tuple[int, int]:
    """The contiguous rows ``[start, stop)`` of an ``n``-row set that ``rank`` of ``size`` processes takes
    (the first ``n % size`` ranks take one more)."""
    if rank is None or size is None:
        rank, size = world()
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def gather_rows(part: torch.Tensor, n: int) -> torch.Tensor:
    """Every rank's ``part`` (its :func:`shard` of ``n`` rows) concatenated in rank order, on every rank
    (tensor collectives only: the shards are padded to one size, gathered, trimmed)."""
    rank, size = world()
    if size == 1:
        return part
    sizes = [shard(n, r, size) for r in range(size)]
    longest = max(stop - start for start, stop in sizes)
    backend_device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    padded = torch.zeros((longest, *part.shape[1:]), dtype=part.dtype, device=backend_device)
    padded[: len(part)] = part.to(backend_device)
    pieces = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(pieces, padded)
    return torch.cat([p[: stop - start].cpu() for p, (start, stop) in zip(pieces, sizes)])
