"""CrypTen holds a share on a CUDA device in its ``CUDALongTensor`` wrapper (CUDA has no int64
matmul or convolution; the wrapper runs them as float64 blocks); on the CPU a share is a plain
int64 tensor. cotrain's transports and protocols compute on the plain tensor, and hand CrypTen
back the wrapper wherever they were given one."""

from __future__ import annotations

import sys
from typing import Any

import torch


def is_wrapped(value: Any) -> bool:
    """Whether ``value`` is CrypTen's CUDA share wrapper (none can be before crypten is loaded)."""
    wrapper = getattr(sys.modules.get("crypten.cuda"), "CUDALongTensor", None)
    return wrapper is not None and isinstance(value, wrapper)


def plain(share: Any) -> torch.Tensor:
    """The int64 tensor behind ``share`` (itself where it is one: the CPU's case, checked
    first, as every protocol step asks this of several shares)."""
    if type(share) is torch.Tensor:
        return share
    return share.tensor() if is_wrapped(share) else share


def wrapped(tensor: torch.Tensor) -> Any:
    """``tensor`` in CrypTen's CUDA share wrapper."""
    from crypten.cuda import CUDALongTensor

    wrapper = CUDALongTensor()
    wrapper._tensor = tensor  # no copy, and the device kept as it is
    return wrapper


def wrapped_like(tensor: torch.Tensor, share: Any) -> Any:
    """``tensor`` in the form ``share`` has: wrapped where ``share`` is, plain otherwise."""
    if type(share) is torch.Tensor:
        return tensor
    return wrapped(tensor) if is_wrapped(share) and torch.is_tensor(tensor) else tensor


def on_device(tensor: torch.Tensor) -> Any:
    """``tensor`` as CrypTen holds a share of it on its device: wrapped on CUDA."""
    return wrapped(tensor) if tensor.is_cuda else tensor


def to_device(tensor: torch.Tensor, device: Any) -> torch.Tensor:
    """``tensor`` on ``device``. A host tensor goes to a GPU through pinned memory without a wait:
    torch's copy from pageable memory waits for every kernel queued before it, and a round
    receives or draws several tensors, so each would stall the party (and, where the parties
    share a GPU, wait out the others' kernels too). Torch's pinned-memory cache keeps the staging
    buffer until the copy is done."""
    target = device if isinstance(device, torch.device) else torch.device(device)
    if target.type == "cpu" and not tensor.is_cuda:
        return tensor  # the CPU path: every received tensor and draw comes through here
    if target.type != "cuda" or tensor.is_cuda:
        return tensor.to(target)
    return tensor.pin_memory().to(target, non_blocking=True)
