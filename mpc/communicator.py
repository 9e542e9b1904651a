"""A transport as CrypTen sees it: CrypTen's own per-call accounting on top.

With ``cfg.communicator.verbose`` set, CrypTen's communicators count every call into
``comm_rounds``, ``comm_bytes`` and ``comm_time`` by a fixed rule (a send counts its
elements, an all-reduce twice its elements, a gather at the root P - 1 tensors, ...), and
``crypten.reset_communication_stats`` / ``get_communication_stats`` read those counters.
The rule is CrypTen's decorator (``crypten.communicator.communicator._logging``), applied
here around the transport's calls, so every transport counts as CrypTen does. The
transport's own wire accounting (``transport.stats``: bytes actually moved, rounds, time;
what cotrain's summaries report) is separate and always on.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch

from protocols.crypten_hooks import load_crypten
from protocols.share_tensors import is_wrapped, plain, wrapped

load_crypten()  # crypten imports only with the compatibility fixes in place
_crypten_communicator = importlib.import_module("crypten.communicator.communicator")
Communicator, _logging = _crypten_communicator.Communicator, _crypten_communicator._logging

# the communicator calls CrypTen logs, by the name its rule keys on
LOGGED_CALLS = ("send", "recv", "isend", "irecv", "scatter", "reduce", "all_reduce", "gather", "all_gather",
                "broadcast", "barrier", "send_obj", "recv_obj", "broadcast_obj")


def _holds_wrapper(value: Any) -> bool:
    """Whether ``value`` (a tensor, or a list of them) holds CrypTen's CUDA share wrapper."""
    if isinstance(value, (list, tuple)):
        return any(is_wrapped(item) for item in value)
    return is_wrapped(value)


def _unwrapped(value: Any) -> Any:
    return type(value)(plain(item) for item in value) if isinstance(value, (list, tuple)) else plain(value)


def _rewrapped(result: Any) -> Any:
    if isinstance(result, (list, tuple)):
        return type(result)(_rewrapped(item) for item in result)
    return wrapped(result) if torch.is_tensor(result) else result


def _forward(name: str) -> Callable[..., Any]:
    def call(self: "CrypTenCommunicator", *args: Any, **kwargs: Any) -> Any:
        method = getattr(self.transport, name)
        if not any(_holds_wrapper(value) for value in (*args, *kwargs.values())):
            return method(*args, **kwargs)
        # transports move plain tensors (in place where asked: the wrapper shares the storage);
        # CrypTen gets its CUDA wrapper back where it gave one
        return _rewrapped(method(*map(_unwrapped, args), **{key: _unwrapped(v) for key, v in kwargs.items()}))

    call.__name__ = name  # CrypTen's rule dispatches on the function's name
    return _logging(call)


class CrypTenCommunicator(Communicator):
    """``transport`` (or a party group) with CrypTen's communicator statistics."""

    BYTES_PER_ELEMENT = 8

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.reset_communication_stats()

    def __getattr__(self, name: str) -> Any:  # identity, names, stats, close, gather_obj, ...
        return getattr(self.transport, name)

    def get_rank(self) -> int:
        return self.transport.get_rank()

    def get_world_size(self) -> int:
        return self.transport.get_world_size()

    def get_name(self) -> str:
        return self.transport.get_name()

    def set_name(self, name: str) -> None:
        self.transport.set_name(name)


for _name in LOGGED_CALLS:
    setattr(CrypTenCommunicator, _name, _forward(_name))
