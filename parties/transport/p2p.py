"""CrypTen's whole communicator surface built from two point-to-point message primitives.

A subclass moves messages; this class owns everything above that once: per-peer sequence
numbers, the tensor header (op, seq, sender, dtype, shape), validation of what arrives,
batching a list of tensors into one message, and every collective. Each message is one
msgpack header plus one raw byte buffer, so a transport (ZeroMQ, MPI, ...) implements only
``_send_frame`` and ``_recv_frame``.
"""

from __future__ import annotations

from abc import abstractmethod
from contextlib import contextmanager
from typing import Any, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch.distributed import ReduceOp

from parties.transport.base import PartyAddress, Transport, TransportOptions, reduce_tensors
from parties.transport.wire import WireError, dtype_name, tensor_nbytes

HEADER_KEYS = frozenset({"op", "seq", "sender", "dtype", "shape"})


class Waitable(Protocol):
    def wait(self) -> None: ...


class Done:
    """A send the transport has already finished with."""

    def wait(self) -> None:
        pass

    def is_completed(self) -> bool:
        return True


DONE = Done()


class _ReceiveRequest:
    """An irecv: its sequence number is taken when posted, the message when waited on."""

    def __init__(self, transport: "PointToPointTransport", src: int, seq: int,
                 target: torch.Tensor) -> None:
        self._transport, self._src, self._seq, self._target = transport, src, seq, target
        self._done = False

    def wait(self) -> None:
        if not self._done:
            with self._transport.stats.timed():
                self._transport._receive_into("p2p", self._src, [self._target], seq=self._seq)
            self._done = True

    def is_completed(self) -> bool:
        return self._done


def _as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous host uint8 view of ``tensor`` (a copy only when it is on a device or strided)."""
    host = tensor.detach()
    if host.device.type != "cpu":
        host = host.cpu()
    return host.contiguous().reshape(-1).view(torch.uint8)


def _fresh(like: torch.Tensor) -> torch.Tensor:
    return torch.empty(like.shape, dtype=like.dtype, device=like.device)


class PointToPointTransport(Transport):
    """Collectives as direct messages between every pair of parties (small worlds)."""

    def __init__(self, address: PartyAddress, options: TransportOptions) -> None:
        super().__init__(address, options)
        self._send_seq = [0] * self.world_size
        self._recv_seq = [0] * self.world_size

    # -- what a subclass provides -----------------------------------------------------------
    @abstractmethod
    def _send_frame(self, dst: int, header: dict, buffer: np.ndarray) -> Waitable:
        """Queue one message for ``dst``; ``wait()`` returns once ``buffer`` may change."""

    @abstractmethod
    def _recv_frame(self, src: int, expect: dict, timeout_s: float) -> tuple[Any, memoryview]:
        """The message numbered ``expect['seq']`` from ``src`` as (header, payload bytes).

        Waits at most ``timeout_s``, then raises TransportError naming ``src`` and
        ``expect['op']``. The header is returned unvalidated (anything msgpack decodes to).
        """

    # -- messages of tensors ----------------------------------------------------------------
    def _take_seq(self, counters: list[int], peer: int) -> int:
        seq = counters[peer]
        counters[peer] = seq + 1
        return seq

    def _send_tensors(self, op: str, dst: int, tensors: Sequence[torch.Tensor]) -> Waitable:
        views = [_as_bytes(tensor) for tensor in tensors]
        # one buffer per message: a list travels as one message, at the cost of one copy
        payload = views[0] if len(views) == 1 else torch.cat(views) if views else torch.empty(0, dtype=torch.uint8)
        if payload.numel() > self.options.max_message_bytes:
            raise WireError(
                f"{op} to {self.peer(dst)} of {payload.numel()} bytes is over "
                f"transport.max_message_bytes={self.options.max_message_bytes}"
            )
        header = {
            "op": op,
            "seq": self._take_seq(self._send_seq, dst),
            "sender": self.rank,
            "dtype": [dtype_name(tensor.dtype) for tensor in tensors],
            "shape": [list(tensor.shape) for tensor in tensors],
        }
        return self._send_frame(dst, header, payload.numpy())

    def _receive_into(self, op: str, src: int, targets: Sequence[torch.Tensor],
                      seq: int | None = None, timeout_s: float | None = None) -> list[torch.Tensor]:
        """Receive ``src``'s next ``op`` message and write it into ``targets``."""
        if seq is None:
            seq = self._take_seq(self._recv_seq, src)
        timeout = self.options.timeout_s if timeout_s is None else timeout_s
        header, payload = self._recv_frame(src, {"op": op, "seq": seq}, timeout)
        self._validate(src, header, op, seq, targets, len(payload))
        offset = 0
        for target in targets:
            size = tensor_nbytes(target)
            host = target if target.device.type == "cpu" and target.is_contiguous() else _fresh(target).cpu()
            if size:
                host.reshape(-1).view(torch.uint8).numpy()[:] = np.frombuffer(payload, np.uint8, size, offset)
            if host is not target:
                target.copy_(host)
            offset += size
        return list(targets)

    def _validate(self, src: int, header: Any, op: str, seq: int,
                  targets: Sequence[torch.Tensor], nbytes: int) -> None:
        peer = self.peer(src)
        if not isinstance(header, dict) or set(header) != HEADER_KEYS:
            raise WireError(f"{peer} sent a malformed header during {op}")
        expected = {
            "sender": src,
            "op": op,
            "seq": seq,
            "dtype": [dtype_name(target.dtype) for target in targets],
            "shape": [list(target.shape) for target in targets],
        }
        for key, value in expected.items():
            if header[key] != value:
                raise WireError(f"{peer} sent {key}={header[key]!r} during {op}; expected {value!r}")
        size = sum(tensor_nbytes(target) for target in targets)
        if nbytes != size:
            raise WireError(f"{peer} sent {nbytes} payload bytes during {op}; expected {size}")

    @contextmanager
    def _operation(self) -> Iterator[None]:
        with self.stats.timed():
            yield
        self.stats.add(rounds=1)

    def _others(self) -> list[int]:
        return [rank for rank in range(self.world_size) if rank != self.rank]

    def _exchange(self, op: str, tensors: Sequence[torch.Tensor]) -> dict[int, list[torch.Tensor]]:
        """Send ``tensors`` to every other party and receive theirs (shaped like ours)."""
        sends = [self._send_tensors(op, dst, tensors) for dst in self._others()]
        received = {src: self._receive_into(op, src, [_fresh(t) for t in tensors]) for src in self._others()}
        for handle in sends:
            handle.wait()
        received[self.rank] = list(tensors)
        return received

    def _handshake(self, timeout_s: float) -> None:
        """Every party greets every other; returns once all greetings arrived."""
        with self._operation():
            for dst in self._others():
                self._send_tensors("hello", dst, [])
            for src in self._others():
                self._receive_into("hello", src, [], timeout_s=timeout_s)

    # -- point to point ---------------------------------------------------------------------
    def send(self, tensor: torch.Tensor, dst: int) -> None:
        with self._operation():
            self._send_tensors("p2p", dst, [tensor]).wait()

    def recv(self, tensor: torch.Tensor, src: int | None = None) -> torch.Tensor:
        with self._operation():
            return self._receive_into("p2p", self._source(src), [_fresh(tensor)])[0]

    def isend(self, tensor: torch.Tensor, dst: int) -> Waitable:
        with self._operation():
            return self._send_tensors("p2p", dst, [tensor])

    def irecv(self, tensor: torch.Tensor, src: int | None = None) -> _ReceiveRequest:
        source = self._source(src)
        self.stats.add(rounds=1)
        return _ReceiveRequest(self, source, self._take_seq(self._recv_seq, source), tensor)

    def _source(self, src: int | None) -> int:
        # messages are numbered per peer, so a receive must say whose message it takes
        if src is None or not 0 <= src < self.world_size or src == self.rank:
            raise ValueError(f"{self.__class__.__name__} receives need a peer's rank as src, got {src!r}")
        return src

    # -- collectives ------------------------------------------------------------------------
    def scatter(self, scatter_list: list[torch.Tensor], src: int, size: Any = None,
                device: Any = None) -> torch.Tensor:
        with self._operation():
            if self.rank == src:
                sends = [self._send_tensors("scatter", dst, [scatter_list[dst]]) for dst in self._others()]
                for handle in sends:
                    handle.wait()
                return scatter_list[src].clone()
            mine = scatter_list[self.rank] if len(scatter_list) > self.rank else None
            shape = size if size is not None else mine.size()
            dtype = mine.dtype if mine is not None else torch.long
            where = device if device is not None else (mine.device if mine is not None else "cpu")
            return self._receive_into("scatter", src, [torch.empty(shape, dtype=dtype, device=where)])[0]

    def reduce(self, input: Any, dst: int, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        tensors = list(input) if batched else [input]
        with self._operation():
            if self.rank != dst:
                self._send_tensors("reduce", dst, tensors).wait()
                return input
            received = {src: self._receive_into("reduce", src, [_fresh(t) for t in tensors])
                        for src in self._others()}
            received[self.rank] = tensors
            results = self._combine(received, len(tensors), op)
        return results if batched else results[0]

    def all_reduce(self, input: Any, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        tensors = list(input) if batched else [input]
        with self._operation():
            results = self._combine(self._exchange("all_reduce", tensors), len(tensors), op)
        return results if batched else results[0]

    def _combine(self, received: dict[int, list[torch.Tensor]], count: int, op: Any) -> list[torch.Tensor]:
        # rank order everywhere, so float results are identical at every party
        return [reduce_tensors([received[rank][k] for rank in range(self.world_size)], op) for k in range(count)]

    def gather(self, tensor: torch.Tensor, dst: int) -> list[torch.Tensor] | None:
        with self._operation():
            if self.rank != dst:
                self._send_tensors("gather", dst, [tensor]).wait()
                return None
            return [tensor.clone() if src == dst else self._receive_into("gather", src, [_fresh(tensor)])[0]
                    for src in range(self.world_size)]

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        with self._operation():
            received = self._exchange("all_gather", [tensor])
        return [tensor.clone() if rank == self.rank else received[rank][0] for rank in range(self.world_size)]

    def broadcast(self, input: Any, src: int, group: Any = None, batched: bool = False) -> Any:
        """In place, like CrypTen's own communicator: receivers' tensors are overwritten."""
        tensors = list(input) if batched else [input]
        with self._operation():
            if self.rank == src:
                sends = [self._send_tensors("broadcast", dst, tensors) for dst in self._others()]
                for handle in sends:
                    handle.wait()
            else:
                self._receive_into("broadcast", src, tensors)
        return input

    def barrier(self) -> None:
        with self._operation():
            self._exchange("barrier", [])
