"""Run a party with CrypTen's CUDA share representation on a machine without CUDA.

On a CUDA device CrypTen holds every share in its ``CUDALongTensor`` wrapper (created where it
shares, reveals, stacks, draws randomness or moves a tensor to the device), and code that takes
a share for a torch tensor breaks only there. This module makes CrypTen wrap in those same
places while the data stays in host memory, so CI, which has no GPU, runs that path too:
``python cuda_wrapped_shares.py <cotrain arguments>`` (torchrun's environment) is one party.
The wrapper is CrypTen's own class; only its refusal to hold host memory is lifted."""

from __future__ import annotations

import sys
from typing import Any, Callable

import torch


def wrap_shares_as_on_cuda() -> None:
    from protocols.crypten_hooks import load_crypten

    load_crypten()
    import protocols.prg
    from crypten.cuda import CUDALongTensor
    from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor
    from crypten.mpc.primitives.binary import BinarySharedTensor
    from protocols.share_tensors import is_wrapped, plain, wrapped

    def hold(self: Any, data: Any = None, device: Any = None) -> None:  # in host memory too
        self._tensor = None if data is None else torch.as_tensor(plain(data)).long()

    def move(self: Any, *args: Any, **kwargs: Any) -> Any:  # as on a device: the wrapper stays
        self._tensor = self._tensor.to(*args, **kwargs)
        return self

    CUDALongTensor.__init__, CUDALongTensor.to = hold, move
    protocols.prg.on_device = wrapped  # cotrain's generators wrap what they draw on a device

    def by_wrapper(name: str, original: Callable) -> Callable:  # CrypTen asks is_cuda here
        def join(tensors: Any, *args: Any, **kwargs: Any) -> Any:
            if any(is_wrapped(t) for t in tensors):
                return getattr(CUDALongTensor, name)(tensors, *args, **kwargs)
            return original(tensors, *args, **kwargs)
        return join

    for module in [m for n, m in list(sys.modules.items()) if n.startswith("crypten") and m is not None]:
        for name in ("torch_stack", "torch_cat"):
            if hasattr(module, name):
                setattr(module, name, by_wrapper(name[len("torch_"):], getattr(module, name)))
    for kind in (ArithmeticSharedTensor, BinarySharedTensor):
        def from_shares(share: Any, *args: Any, _original: Callable = kind.from_shares, **kwargs: Any) -> Any:
            result = _original(share, *args, **kwargs)
            result.share = result.share if is_wrapped(result.share) else wrapped(result.share)
            return result
        kind.from_shares = staticmethod(from_shares)


if __name__ == "__main__":
    wrap_shares_as_on_cuda()
    from launch.cli import main

    sys.exit(main(sys.argv[1:]))
