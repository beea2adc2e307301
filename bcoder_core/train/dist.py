"""torch.distributed helpers: one place that knows whether we run under ``torchrun``.

``torchrun --standalone --nproc_per_node=N`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; without
them the job is a single process (world size 1) and no process group is created. The backend is
NCCL when the device is CUDA and gloo on CPU. Rank 0 alone logs, serves metrics and writes
checkpoints; :func:`barrier` brackets the saves so no rank races ahead of a checkpoint.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    """Global rank (0 in a single-process run)."""
    local_rank: int
    """Rank on this node (selects the CUDA device)."""
    world_size: int
    """Number of processes."""
    device: torch.device
    """The device this rank computes on."""

    @property
    def is_main(self) -> bool:
        """True on rank 0: the only rank that logs, serves metrics and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group exists (world size > 1)."""
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Create the process group from torchrun's environment (no-op for a single process).

    ``device`` is "auto" (CUDA when available), "cpu" or "cuda".
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        from bcoder_core.errors import BcoderError

        raise BcoderError("device=cuda was asked for but no CUDA device is available")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if info.distributed:
        torch_dist.barrier()


def all_gather_object(info: DistInfo, obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` in a single process)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    torch_dist.all_gather_object(out, obj)
    return out


def broadcast_object(info: DistInfo, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(info: DistInfo, values: dict[str, float]) -> dict[str, float]:
    """Average a dict of floats over ranks (same keys on every rank)."""
    if not info.distributed or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=info.device)
    torch_dist.all_reduce(t)
    t /= info.world_size
    return dict(zip(keys, t.tolist(), strict=True))


def sum_over_ranks(info: DistInfo, value: float) -> float:
    """Sum one number over ranks."""
    if not info.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    torch_dist.all_reduce(t)
    return float(t.item())


def cleanup() -> None:
    """Destroy the process group if one was created, after every rank has reached this point."""
    if torch_dist.is_initialized():
        with contextlib.suppress(RuntimeError):  # a peer that already failed: still tear down ours
            torch_dist.barrier()
        torch_dist.destroy_process_group()
