"""CrypTen's whole communicator surface built from two point-to-point message primitives.

A subclass moves messages; this class owns everything above that once: per-peer sequence
numbers, the tensor header (op, seq, sender, dtype, shape; ``tensor_header``), validation
of what arrives, batching a list of tensors into one message, and every collective. Each
message is one binary header plus one raw byte buffer, so a transport (ZeroMQ, ...)
implements only ``_send_frame`` and ``_recv_frame``.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from torch.distributed import ReduceOp

from parties.transport.base import PartyAddress, Transport, TransportOptions, reduce_exchanged
from parties.transport import tensor_header
from parties.transport.stats import Timed
from parties.transport.wire import WireError, byte_view, dtype_name
from protocols.share_tensors import to_device

# from this size on, sharing a buffer with the wire beats copying it
ZERO_COPY_BYTES = 1 << 16


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


def _host_array(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's values as a host numpy array sharing its memory where it can."""
    if tensor.requires_grad:
        tensor = tensor.detach()
    if not tensor.is_cpu:
        tensor = tensor.cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)  # numpy has no bfloat16; the bytes are what travel
    return tensor.numpy()


def flat_bytes(array: np.ndarray) -> np.ndarray:
    """An array's bytes as one contiguous uint8 vector (a copy only when it is strided)."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


# numpy twins of the wire dtypes that have one (bfloat16 has none)
_NUMPY = {
    torch.bool: np.bool_, torch.uint8: np.uint8, torch.int8: np.int8, torch.int16: np.int16,
    torch.int32: np.int32, torch.int64: np.int64, torch.float16: np.float16,
    torch.float32: np.float32, torch.float64: np.float64,
}


def add_words(payload: memoryview, addend: np.ndarray) -> memoryview:
    """``payload`` plus ``addend`` (same length), both read as int64 words, wrapping: in place
    where the payload is writable. A payload of another length comes back as it is (the
    header check then refuses it)."""
    if len(payload) != addend.nbytes or len(payload) % 8:
        return payload
    ours = addend.view(np.int64)
    if payload.readonly:
        return memoryview(np.frombuffer(payload, np.int64) + ours).cast("B")
    words = np.frombuffer(payload, np.int64)
    words += ours
    return payload


def _word_reduction(op: Any) -> Any:
    """numpy's function for the reductions CrypTen asks of int64 words (shares, packed bits),
    None for any other (compared, not hashed: a ``ReduceOp`` object equals its type's member
    but hashes apart)."""
    return np.add if op == ReduceOp.SUM else np.bitwise_xor if op == ReduceOp.BXOR else None


def _words(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether ``tensors`` are all int64 (every party decides alike: the peer's are the same)."""
    return bool(tensors) and all(t.dtype == torch.int64 for t in tensors)


def _summable(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether an all-reduce of ``tensors`` is a sum of int64 words big enough to travel in
    chunks (shares: the openings of Beaver products and truncations); every party decides
    alike from the tensors' kinds and sizes, so both take the same path."""
    return (bool(tensors) and all(t.dtype == torch.int64 for t in tensors)
            and sum(t.numel() for t in tensors) * 8 >= ZERO_COPY_BYTES)


def _tensor_from(payload: memoryview, offset: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """A host tensor shaped like ``like`` from ``size`` bytes of ``payload`` at ``offset``.

    Large aligned payloads are adopted as they are (the transport handed them over); small
    ones are copied, through numpy because that costs fewer calls than torch.
    """
    count, shape = like.numel(), like.shape
    if size >= ZERO_COPY_BYTES and not payload.readonly:
        if np.frombuffer(payload, np.uint8, 1, offset).ctypes.data % like.dtype.itemsize == 0:
            return torch.frombuffer(payload, dtype=like.dtype, count=count, offset=offset).view(shape)
    twin = _NUMPY.get(like.dtype)
    if twin is None:
        return torch.from_numpy(np.frombuffer(payload, np.uint8, size, offset).copy()).view(like.dtype).view(shape)
    return torch.from_numpy(np.frombuffer(payload, twin, count, offset).reshape(shape).copy())


class _Operation(Timed):
    """Times one communicator call and counts it as a round (cheaper than a generator)."""

    __slots__ = ()

    def __exit__(self, kind: Any, *_: Any) -> None:
        super().__exit__(kind)
        if kind is None:
            self._stats.rounds += 1


_NO_BYTES = np.empty(0, dtype=np.uint8)


class PointToPointTransport(Transport):
    """Collectives as direct messages between every pair of parties (small worlds)."""

    def __init__(self, address: PartyAddress, options: TransportOptions) -> None:
        super().__init__(address, options)
        self._send_seq = [0] * self.world_size
        self._recv_seq = [0] * self.world_size
        self._timer = _Operation(self.stats)
        self._peers = tuple(rank for rank in range(self.world_size) if rank != self.rank)

    # -- what a subclass provides -----------------------------------------------------------
    @abstractmethod
    def _send_frame(self, dst: int, header: bytes, buffer: np.ndarray) -> Waitable:
        """Queue one message (``tensor_header`` bytes, then ``buffer``) for ``dst``;
        ``wait()`` returns once ``buffer`` may change.

        ``buffer`` holds the payload in C order but may be strided or shaped: small payloads
        need only ``tobytes()``; ``flat_bytes`` gives the contiguous bytes of large ones.
        """

    @abstractmethod
    def _recv_frame(self, src: int, op: str, seq: int, timeout_s: float) -> tuple[bytes, memoryview]:
        """The message numbered ``seq`` from ``src`` as (header, payload bytes).

        The payload is the caller's to keep: a writable one may become a tensor's memory.

        Waits at most ``timeout_s``, then raises TransportError naming ``src`` and ``op``.
        The header is returned unvalidated (any bytes the peer sent).
        """

    # -- messages of tensors ----------------------------------------------------------------
    def _take_seq(self, counters: list[int], peer: int) -> int:
        seq = counters[peer]
        counters[peer] = seq + 1
        return seq

    @staticmethod
    def _payload(tensors: Sequence[torch.Tensor]) -> np.ndarray:
        """The bytes of a message of ``tensors``: a list travels as one message, at the cost of one copy."""
        arrays = [_host_array(tensor) for tensor in tensors]
        return arrays[0] if len(arrays) == 1 else np.concatenate([flat_bytes(a) for a in arrays]) \
            if arrays else _NO_BYTES

    def _send_tensors(self, op: str, dst: int, tensors: Sequence[torch.Tensor],
                      payload: np.ndarray | None = None) -> Waitable:
        if payload is None:
            payload = self._payload(tensors)
        if payload.nbytes > self.options.max_message_bytes:
            raise WireError(
                f"{op} to {self.peer(dst)} of {payload.nbytes} bytes is over "
                f"transport.max_message_bytes={self.options.max_message_bytes}"
            )
        header = tensor_header.encode(op, self._take_seq(self._send_seq, dst), self.rank, tensors)
        return self._send_frame(dst, header, payload)

    def _take(self, op: str, src: int, likes: Sequence[torch.Tensor], seq: int | None,
              timeout_s: float | None) -> tuple[memoryview, list[int]]:
        """The payload of ``src``'s next ``op`` message once its header matches ``likes``,
        with each tensor's size in bytes."""
        if seq is None:
            seq = self._take_seq(self._recv_seq, src)
        timeout = self.options.timeout_s if timeout_s is None else timeout_s
        header, payload = self._recv_frame(src, op, seq, timeout)
        return payload, self._validate(src, header, op, seq, likes, len(payload))

    def _receive(self, op: str, src: int, likes: Sequence[torch.Tensor],
                 timeout_s: float | None = None) -> list[torch.Tensor]:
        """``src``'s next ``op`` message as new tensors shaped like ``likes``, on their devices."""
        payload, sizes = self._take(op, src, likes, None, timeout_s)
        return self._unpack(payload, sizes, likes)

    @staticmethod
    def _unpack(payload: memoryview, sizes: Sequence[int], likes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """A payload's tensors shaped like ``likes``, on their devices (large ones adopt its memory)."""
        results, offset = [], 0
        for like, size in zip(likes, sizes):
            # an empty payload has nothing to adopt or copy
            host = _tensor_from(payload, offset, size, like) if size else torch.empty(like.shape, dtype=like.dtype)
            results.append(to_device(host, like.device))
            offset += size
        return results

    def _receive_into(self, op: str, src: int, targets: Sequence[torch.Tensor], seq: int | None = None) -> None:
        """Write ``src``'s next ``op`` message into ``targets`` in place."""
        payload, sizes = self._take(op, src, targets, seq, None)
        offset = 0
        for target, size in zip(targets, sizes):
            target = target.detach()  # write through the data: the target may require grad
            staged = target.device.type != "cpu" or not target.is_contiguous()
            host = torch.empty(target.shape, dtype=target.dtype) if staged else target
            if size:
                byte_view(host).numpy()[:] = np.frombuffer(payload, np.uint8, size, offset)
            if host is not target:
                target.copy_(host)
            offset += size

    def _validate(self, src: int, header: bytes, op: str, seq: int,
                  likes: Sequence[torch.Tensor], nbytes: int) -> list[int]:
        """Check a header against what we expect; returns the expected byte size per tensor."""
        sizes = [like.numel() * like.dtype.itemsize for like in likes]
        if header == tensor_header.encode(op, seq, src, likes) and nbytes == sum(sizes):
            return sizes
        return self._mismatch(src, header, op, seq, likes, nbytes, sizes)

    def _mismatch(self, src: int, header: bytes, op: str, seq: int, likes: Sequence[torch.Tensor],
                  nbytes: int, sizes: list[int]) -> list[int]:
        """A header unlike the one expected: accepted only where each shape holds as many
        elements as ours (like gloo: CrypTen sends a 0-d seed into (1,)); otherwise an error
        naming the peer and what differs."""
        peer = self.peer(src)
        got = tensor_header.decode(header, peer)
        expected = {"sender": src, "op": op, "seq": seq,
                    "dtypes": [dtype_name(like.dtype) for like in likes]}
        for key, value in expected.items():
            if getattr(got, key) != value:
                raise WireError(f"{peer} sent {key}={getattr(got, key)!r} during {op}; expected {value!r}")
        counts = [like.numel() for like in likes]
        if [math.prod(shape) for shape in got.shapes] != counts:
            raise WireError(f"{peer} sent shapes={got.shapes!r} during {op}; expected {counts} elements")
        if nbytes != sum(sizes):
            raise WireError(f"{peer} sent {nbytes} payload bytes during {op}; expected {sum(sizes)}")
        return sizes

    def _recv_summed(self, src: int, op: str, seq: int, addend: np.ndarray,
                     timeout_s: float) -> tuple[bytes, memoryview]:
        """As ``_recv_frame``, with ``addend``'s int64 words added to the payload's. A transport
        that receives in chunks adds them as they arrive (while the rest is on its way)."""
        header, payload = self._recv_frame(src, op, seq, timeout_s)
        return header, add_words(payload, addend)

    def sum_with_peer(self, op: str, tensors: Sequence[torch.Tensor], peer: int) -> list[torch.Tensor] | None:
        """Our int64 ``tensors`` plus ``peer``'s, which calls this at the same point with tensors
        of the same shapes: one message each way, the peer's words added to ours as they
        arrive. None, with nothing sent, for tensors :func:`_summable` refuses. Counts no round
        (its caller's collective is the round)."""
        if not _summable(tensors):
            return None
        with self.stats.timed():
            payload = self._payload(tensors)
            handle = self._send_tensors(op, peer, tensors, payload)
            seq = self._take_seq(self._recv_seq, peer)
            header, summed = self._recv_summed(peer, op, seq, flat_bytes(payload), self.options.timeout_s)
            sizes = self._validate(peer, header, op, seq, tensors, len(summed))
            handle.wait()
        return self._unpack(summed, sizes, tensors)

    def _reduce_words_with_peer(self, tensors: Sequence[torch.Tensor], reduction: Any,
                                peer: int) -> list[torch.Tensor]:
        """An all-reduce of int64 ``tensors`` with one peer, combined by ``reduction`` (a numpy
        ufunc, :func:`_word_reduction`'s) in one call over the
        whole message: the same message each way as the general path and the same words (a
        sum or XOR of integers is exact in any order), without its per-rank bookkeeping
        (a round's few hundred words cost more in Python calls than in arithmetic)."""
        with self.stats.timed():
            payload = self._payload(tensors)
            handle = self._send_tensors("all_reduce", peer, tensors, payload)
            received, sizes = self._take("all_reduce", peer, tensors, None, None)
            handle.wait()
        combined = reduction(np.frombuffer(received, np.int64), flat_bytes(payload).view(np.int64))
        results, offset = [], 0
        for like, size in zip(tensors, sizes):
            count = size // 8
            host = torch.from_numpy(combined[offset:offset + count]).view(like.shape)
            results.append(to_device(host, like.device))
            offset += count
        return results

    def _operation(self) -> _Operation:
        return self._timer

    def _others(self) -> tuple[int, ...]:
        return self._peers

    def _exchange(self, op: str, tensors: Sequence[torch.Tensor],
                  peers: Sequence[int] | None = None) -> dict[int, list[torch.Tensor]]:
        """Send ``tensors`` to every other party (or to ``peers``) and receive theirs (shaped
        like ours), one message each way whatever the number of tensors."""
        peers = self._others() if peers is None else peers
        sends = [self._send_tensors(op, dst, tensors) for dst in peers]
        received = {src: self._receive(op, src, tensors) for src in peers}
        for handle in sends:
            handle.wait()
        received[self.rank] = list(tensors)
        return received

    def _handshake(self, timeout_s: float) -> None:
        """Every party greets every other; returns once all greetings arrived."""
        for dst in self._others():
            self._send_tensors("hello", dst, [])
        for src in self._others():
            self._receive("hello", src, [], timeout_s=timeout_s)
        self.stats.reset()  # setting up is not part of the computation being measured

    # -- point to point ---------------------------------------------------------------------
    def send(self, tensor: torch.Tensor, dst: int) -> None:
        with self._operation():
            self._send_tensors("p2p", dst, [tensor]).wait()

    def recv(self, tensor: torch.Tensor, src: int | None = None) -> torch.Tensor:
        with self._operation():
            return self._receive("p2p", self._source(src), [tensor])[0]

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
            return self._receive("scatter", src, [torch.empty(shape, dtype=dtype, device=where)])[0]

    def reduce(self, input: Any, dst: int, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        tensors = list(input) if batched else [input]
        with self._operation():
            if self.rank != dst:
                self._send_tensors("reduce", dst, tensors).wait()
                return None
            received = {src: self._receive("reduce", src, tensors) for src in self._others()}
            received[self.rank] = tensors
            results = self._combine(received, len(tensors), op)
        return results if batched else results[0]

    def all_reduce(self, input: Any, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        tensors = list(input) if batched else [input]
        results = self.all_reduce_among(tensors, op, self._others())
        self.stats.rounds += 1
        return results if batched else results[0]

    def all_reduce_among(self, tensors: Sequence[torch.Tensor], op: Any, peers: Sequence[int]) -> list[torch.Tensor]:
        """The reduction of ``tensors`` with ``peers``' (who call this at the same point, each
        naming the others): one message to each peer and one from each, however many tensors;
        with one peer, a sum is added as it arrives. Counts no round (the caller's collective
        is the round); a party group of a larger world uses it for its own all-reduce."""
        reduction = _word_reduction(op) if len(peers) == 1 else None
        if reduction is not None and _words(tensors):
            if reduction is np.add:
                results = self.sum_with_peer("all_reduce", tensors, peers[0])
                if results is not None:
                    return results
            return self._reduce_words_with_peer(tensors, reduction, peers[0])
        with self.stats.timed():
            return self._combine(self._exchange("all_reduce", tensors, peers), len(tensors), op)

    def _combine(self, received: dict[int, list[torch.Tensor]], count: int, op: Any) -> list[torch.Tensor]:
        return [reduce_exchanged(received, self.rank, k, op) for k in range(count)]

    def gather(self, tensor: torch.Tensor, dst: int) -> list[torch.Tensor | None]:
        with self._operation():
            if self.rank != dst:
                self._send_tensors("gather", dst, [tensor]).wait()
                return [None]
            return [tensor.clone() if src == dst else self._receive("gather", src, [tensor])[0]
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
