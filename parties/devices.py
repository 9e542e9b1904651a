"""Which device a party computes on: ``device=cuda`` means one GPU per party on its host."""

from __future__ import annotations

import os

import torch

# the index of this process among the parties on its host, by launcher
LOCAL_RANK_VARIABLES = ("LOCAL_RANK", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "PMIX_LOCAL_RANK")


class DeviceError(RuntimeError):
    """The configured device does not exist on this host."""


def local_rank(rank: int) -> int:
    """The launcher's local rank (torchrun, MPICH, Open MPI); the party rank otherwise."""
    for variable in LOCAL_RANK_VARIABLES:
        value = os.environ.get(variable, "")
        if value.isdigit():
            return int(value)
    return rank


def party_device(device: str, rank: int) -> str:
    """``cpu`` stays; ``cuda`` becomes ``cuda:(local rank % GPUs on this host)``; ``cuda:i`` stays."""
    if not device.startswith("cuda"):
        return device
    if not torch.cuda.is_available():
        raise DeviceError(f"device={device} but this host has no usable CUDA device; use device=cpu")
    count = torch.cuda.device_count()
    index = int(device.partition(":")[2]) if ":" in device else local_rank(rank) % count
    if not 0 <= index < count:
        raise DeviceError(f"device={device} but this host has {count} CUDA device(s)")
    torch.cuda.set_device(index)
    return f"cuda:{index}"
