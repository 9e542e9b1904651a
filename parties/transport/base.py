"""The communicator surface CrypTen calls, shared by every transport.

A transport subclasses :class:`Transport` and supplies tensor send/recv and the
collectives; object messages, identity, communication statistics and the error vocabulary
live here once. CrypTen reaches a transport through ``mpc.session``, which installs it as
CrypTen's communicator; nothing here imports CrypTen or the engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch.distributed import ReduceOp

from parties.transport.stats import CommStats
from parties.transport.wire import WireError, pack_object, tensor_nbytes, unpack_object


class TransportError(RuntimeError):
    """Communication with a peer failed: it died, timed out, or never connected."""


@dataclass
class TransportOptions:
    """Settings every transport understands (``transport.*`` in the config)."""

    name: str = "zmq"
    timeout_s: float = 120.0
    connect_timeout_s: float = 60.0
    max_message_bytes: int = 1 << 31
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    peers: dict[str, str] = field(default_factory=dict)
    # zmq: CurveZMQ encryption + authentication, key files per party (see transport.keys)
    encrypt: bool = True
    key_dir: str = ""
    public_keys: dict[str, str] = field(default_factory=dict)
    connect_retry_s: float = 0.05  # first reconnect wait; doubles up to 1 s
    # a peer that answers nothing for heartbeat_timeout_s is reported as gone (zmq)
    heartbeat_s: float = 1.0
    heartbeat_timeout_s: float = 30.0
    # let shares cross a host boundary unencrypted (gloo, mpi, zmq with encrypt=false)
    allow_plaintext: bool = False


@dataclass(frozen=True)
class PartyAddress:
    """Who a party is on the wire: its rank, its name and the names of all parties."""

    rank: int
    world_size: int
    names: tuple[str, ...]

    def name_of(self, rank: int) -> str:
        return f"party {rank} ({self.names[rank]})" if rank < len(self.names) else f"rank {rank}"


def reduce_tensors(tensors: Sequence[torch.Tensor], op: Any, reuse_first: bool = False) -> torch.Tensor:
    """Locally combine peers' tensors with the reduction CrypTen asked for; with
    ``reuse_first``, into ``tensors[0]`` (the caller's to overwrite) rather than a copy."""
    result = tensors[0] if reuse_first else tensors[0].clone()
    for tensor in tensors[1:]:
        if op == ReduceOp.SUM:
            result.add_(tensor)
        elif op == ReduceOp.BXOR:
            result.bitwise_xor_(tensor)
        else:
            raise ValueError(f"unsupported reduction {op}; CrypTen uses SUM and BXOR")
    return result


def reduce_exchanged(received: dict[int, Sequence[torch.Tensor]], rank: int, index: int, op: Any) -> torch.Tensor:
    """The reduction of every party's ``index``-th tensor of an exchange (``received`` by rank,
    ``rank``'s own among them). Floats in rank order, so every party gets the same bits;
    integers (exact in any order) accumulate into a peer's tensor, received fresh for this
    exchange, rather than into a copy."""
    ranks = sorted(received)
    peers = [r for r in ranks if r != rank]
    first = received[ranks[0]][index]
    if not peers or first.is_floating_point() or first.is_complex():
        return reduce_tensors([received[r][index] for r in ranks], op)
    order = [peers[0]] + [r for r in ranks if r != peers[0]]
    return reduce_tensors([received[r][index] for r in order], op, reuse_first=True)


class Transport(ABC):
    """Base of all transports; also the object CrypTen's ``comm.get()`` returns."""

    BYTES_PER_ELEMENT = 8

    def __init__(self, address: PartyAddress, options: TransportOptions) -> None:
        self.address = address
        self.options = options
        self.rank = address.rank
        self.world_size = address.world_size
        self.stats = CommStats()
        self._name = address.names[address.rank] if address.names else str(address.rank)

    # -- identity -------------------------------------------------------------------------
    def get_rank(self) -> int:
        return self.rank

    def get_world_size(self) -> int:
        return self.world_size

    def get_name(self) -> str:
        return self._name

    def set_name(self, name: str) -> None:
        self._name = name

    def peer(self, rank: int) -> str:
        return self.address.name_of(rank)

    # -- statistics (CrypTen's names, plus ours) -------------------------------------------
    def reset_communication_stats(self) -> None:
        self.stats.reset()

    def get_communication_stats(self) -> dict:
        return {"rounds": self.stats.rounds, "bytes": self.stats.bytes_sent, "time": self.stats.seconds}

    def print_communication_stats(self) -> None:
        print(f"{self._name}: {self.stats.as_dict()}")

    # -- objects: msgpack over the tensor primitives ---------------------------------------
    def send_obj(self, obj: Any, dst: int, group: Any = None) -> None:
        payload = torch.frombuffer(bytearray(pack_object(obj)), dtype=torch.uint8)
        self.send(torch.tensor([payload.numel()], dtype=torch.int64), dst)
        if payload.numel():
            self.send(payload, dst)

    def recv_obj(self, src: int, group: Any = None) -> Any:
        size = int(self.recv(torch.empty(1, dtype=torch.int64), src).item())
        self._check_object_size(size, src)
        payload = self.recv(torch.empty(size, dtype=torch.uint8), src) if size else torch.empty(0)
        return unpack_object(payload.numpy().tobytes(), self.peer(src), self.options.max_message_bytes)

    def broadcast_obj(self, obj: Any, src: int, group: Any = None) -> Any:
        if self.rank == src:
            data = pack_object(obj)
            self.broadcast(torch.tensor([len(data)], dtype=torch.int64), src)
            if data:
                self.broadcast(torch.frombuffer(bytearray(data), dtype=torch.uint8), src)
            return unpack_object(data, self.peer(src), self.options.max_message_bytes)
        size = int(self.broadcast(torch.empty(1, dtype=torch.int64), src).item())
        self._check_object_size(size, src)
        payload = self.broadcast(torch.empty(size, dtype=torch.uint8), src) if size else torch.empty(0)
        return unpack_object(payload.numpy().tobytes(), self.peer(src), self.options.max_message_bytes)

    def gather_obj(self, obj: Any, dst: int) -> list[Any] | None:
        """Every party's object at ``dst`` (in rank order); None elsewhere."""
        if self.rank != dst:
            self.send_obj(obj, dst)
            return None
        return [obj if rank == dst else self.recv_obj(rank) for rank in range(self.world_size)]

    def _check_object_size(self, size: int, src: int) -> None:
        if size < 0 or size > self.options.max_message_bytes:
            raise WireError(
                f"{self.peer(src)} announced an object of {size} bytes; "
                f"the limit is transport.max_message_bytes={self.options.max_message_bytes}"
            )

    # -- accounting helpers for subclasses -------------------------------------------------
    def _count(self, tensors: torch.Tensor | Sequence[torch.Tensor], sent_copies: float = 0,
               received_copies: float = 0) -> None:
        items = [tensors] if torch.is_tensor(tensors) else list(tensors)
        nbytes = sum(tensor_nbytes(tensor) for tensor in items)
        self.stats.add(sent=nbytes * sent_copies, received=nbytes * received_copies)

    # -- the tensor surface each transport provides ----------------------------------------
    @abstractmethod
    def send(self, tensor: torch.Tensor, dst: int) -> None:
        """Send ``tensor`` to ``dst``; returns once it is handed to the wire."""

    @abstractmethod
    def recv(self, tensor: torch.Tensor, src: int | None = None) -> torch.Tensor:
        """Receive into a tensor shaped like ``tensor`` from ``src`` and return it."""

    @abstractmethod
    def isend(self, tensor: torch.Tensor, dst: int) -> Any:
        """Non-blocking send; the handle has ``wait()``."""

    @abstractmethod
    def irecv(self, tensor: torch.Tensor, src: int | None = None) -> Any:
        """Non-blocking receive into ``tensor``; the handle has ``wait()``."""

    @abstractmethod
    def scatter(self, scatter_list: list[torch.Tensor], src: int, size: Any = None,
                device: Any = None) -> torch.Tensor:
        """Party ``src`` sends ``scatter_list[i]`` to party i; each returns its piece."""

    @abstractmethod
    def reduce(self, input: Any, dst: int, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        """Combine every party's tensor (or list, if ``batched``) at ``dst``; None elsewhere.

        Like CrypTen's communicator: a party other than ``dst`` must not mistake its own
        input (a share, when CrypTen reveals to ``dst``) for the result.
        """

    @abstractmethod
    def all_reduce(self, input: Any, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        """Combine every party's tensor (or list, if ``batched``) at every party."""

    @abstractmethod
    def gather(self, tensor: torch.Tensor, dst: int) -> list[torch.Tensor | None]:
        """Every party's tensor at ``dst`` in rank order; ``[None]`` elsewhere (as CrypTen)."""

    @abstractmethod
    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every party's tensor at every party, in rank order."""

    @abstractmethod
    def broadcast(self, input: Any, src: int, group: Any = None, batched: bool = False) -> Any:
        """Party ``src``'s tensor (or list, if ``batched``) at every party, written in place.

        Receivers' tensors are overwritten through their data, as CrypTen's communicator does,
        so a parameter that requires grad can be the target.
        """

    @abstractmethod
    def barrier(self) -> None:
        """Return once every party has entered the barrier."""

    @abstractmethod
    def close(self) -> None:
        """Release sockets and process groups; idempotent."""
