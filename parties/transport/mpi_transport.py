"""MPI transport (mpi4py): tensors move as raw buffers, collectives are MPI's own.

Start the parties with ``mpirun -n N cotrain run transport=mpi``; the rank and world size
come from MPI and must match the config. Nothing is pickled: every message is a typed
buffer spec ``[numpy view, MPI datatype]`` (objects travel as msgpack bytes through the base
class). Every operation is non-blocking underneath and polled against a deadline of
``transport.timeout_s``, so a dead or stuck peer becomes a :class:`TransportError` naming the
peer and the operation instead of a hang. CUDA tensors are staged through host memory.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from typing import Any, Sequence

import numpy as np
import torch
from torch.distributed import ReduceOp

from parties.transport.base import PartyAddress, Transport, TransportError, TransportOptions
from parties.transport.peer_watch import PeerWatch, failing_on_transport_error
from protocols.share_tensors import to_device
from parties.transport.wire import byte_view

_TAG = 7  # one tag for all point-to-point traffic: MPI keeps per-(source, tag) order
_SPIN_S = 2e-3  # poll (yielding the core) this long, then nap from _FIRST_NAP_S up to _MAX_NAP_S
_FIRST_NAP_S = 50e-6
_MAX_NAP_S = 500e-6


def _mpi() -> Any:
    """Import mpi4py lazily: MPI_Init runs on import, only in processes that use MPI."""
    import mpi4py

    mpi4py.rc.thread_level = "single"
    from mpi4py import MPI

    return MPI


def _on_host(tensor: torch.Tensor) -> torch.Tensor:
    host = tensor.detach()
    if host.device.type != "cpu":
        host = host.cpu()
    return host.contiguous()


def _bytes_view(tensor: torch.Tensor) -> np.ndarray:
    """A writable uint8 numpy view of a contiguous CPU tensor's memory (any dtype)."""
    return byte_view(tensor).numpy()


class _Request:
    """A pending MPI request: ``wait()`` polls it against the transport's deadline."""

    def __init__(self, transport: "MpiTransport", request: Any, what: str, keep: Any = None,
                 host: torch.Tensor | None = None, target: torch.Tensor | None = None) -> None:
        self._transport, self._request, self._what = transport, request, what
        self._keep = keep  # buffers MPI reads or writes until the request completes
        self._host, self._target = host, target
        self._done = False

    def wait(self) -> None:
        if self._done:
            return
        with self._transport.stats.timed():
            self._transport._complete(self._request, self._what)
        self._done = True
        if self._host is not None and self._target is not None and self._host is not self._target:
            self._target.copy_(self._host.view_as(self._target))

    def is_completed(self) -> bool:
        if not self._done and self._request.Test():
            self.wait()
        return self._done


class MpiTransport(Transport):
    """Transport over ``MPI.COMM_WORLD`` (a private duplicate of it)."""

    def __init__(self, address: PartyAddress, options: TransportOptions) -> None:
        super().__init__(address, options)
        MPI = _mpi()
        self._MPI = MPI
        world = MPI.COMM_WORLD
        size, rank = world.Get_size(), world.Get_rank()
        if size != self.world_size:
            raise TransportError(
                f"transport=mpi: MPI started {size} process{'es' if size != 1 else ''} but this run has "
                f"{self.world_size} (one per party, plus a dealer where the protocol has one); start them "
                f"with `mpirun -n {self.world_size} cotrain run transport=mpi ...`"
            )
        if rank != self.rank:
            raise TransportError(
                f"transport=mpi: this process is MPI rank {rank} but was told it is party rank {self.rank}; "
                "under mpirun leave party.rank unset (the rank comes from MPI)"
            )
        self._comm = world.Dup()
        self._closed = False
        self._abort_at_exit = False
        atexit.register(self._exit)  # runs before mpi4py's MPI_Finalize (atexit is last in, first out)
        self._types = {
            torch.int64: (MPI.UINT64_T, np.uint64),  # unsigned: sums wrap modulo 2^64, as shares must
            torch.int32: (MPI.UINT32_T, np.uint32),
            torch.int16: (MPI.UINT16_T, np.uint16),
            torch.int8: (MPI.UINT8_T, np.uint8),
            torch.uint8: (MPI.UINT8_T, np.uint8),
            torch.bool: (MPI.UINT8_T, np.uint8),
            torch.float32: (MPI.FLOAT, np.float32),
            torch.float64: (MPI.DOUBLE, np.float64),
        }
        self.in_flight: str | None = None  # read by the peer watch
        self._watch = PeerWatch(self)

    # -- helpers ----------------------------------------------------------------------------
    def _complete(self, request: Any, what: str) -> None:
        """Poll ``request`` until done; raise a TransportError at the deadline.

        MPI progresses (non-blocking collectives included) only while some call polls it, so
        the first milliseconds spin on ``Test``, yielding the core between polls (parties
        often share cores); a longer wait then naps, briefly, to leave the CPU to others.
        """
        if request.Test():
            return
        start = time.monotonic()
        deadline = start + self.options.timeout_s
        nap = _FIRST_NAP_S
        self.in_flight = what
        while not request.Test():
            now = time.monotonic()
            if now - start < _SPIN_S:
                os.sched_yield()
                continue
            if now > deadline:
                raise TransportError(
                    f"{self.peer(self.rank)}: {what} did not complete within "
                    f"transport.timeout_s={self.options.timeout_s:g} (the peer died or stopped responding)"
                )
            time.sleep(nap)
            nap = min(nap * 2, _MAX_NAP_S)
        self.in_flight = None

    def _typed(self, array: torch.Tensor, op: Any) -> list:
        """``[numpy view, MPI type]`` for a reduction; integers as unsigned for defined wrap-around."""
        try:
            mpi_type, np_type = self._types[array.dtype]
        except KeyError:
            raise TransportError(f"transport=mpi cannot reduce tensors of dtype {array.dtype}") from None
        if op == ReduceOp.BXOR and array.dtype.is_floating_point:
            raise TransportError("transport=mpi: BXOR needs an integer tensor")
        return [array.reshape(-1).numpy().view(np_type), mpi_type]

    def _mpi_op(self, op: Any) -> Any:
        if op == ReduceOp.SUM:
            return self._MPI.SUM
        if op == ReduceOp.BXOR:
            return self._MPI.BXOR
        raise TransportError(f"unsupported reduction {op}; CrypTen uses SUM and BXOR")

    def _bytes(self, tensor: torch.Tensor) -> list:
        return [_bytes_view(tensor), self._MPI.BYTE]

    @staticmethod
    def _flatten(hosts: Sequence[torch.Tensor]) -> torch.Tensor:
        return hosts[0].reshape(-1) if len(hosts) == 1 else torch.cat([h.reshape(-1) for h in hosts])

    @staticmethod
    def _split(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        pieces, offset = [], 0
        for tensor in like:
            count = tensor.numel()
            pieces.append(flat[offset:offset + count].view(tensor.shape))
            offset += count
        return pieces

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError(f"{self.peer(self.rank)}: the MPI transport is closed")

    # -- point to point -------------------------------------------------------------------
    def send(self, tensor: torch.Tensor, dst: int) -> None:
        self.isend(tensor, dst).wait()

    def recv(self, tensor: torch.Tensor, src: int | None = None) -> torch.Tensor:
        result = torch.empty(tensor.shape, dtype=tensor.dtype)
        self.irecv(result, src).wait()
        return to_device(result, tensor.device)

    def isend(self, tensor: torch.Tensor, dst: int) -> _Request:
        self._check_open()
        host = _on_host(tensor)
        with self.stats.timed():
            request = self._comm.Isend(self._bytes(host), dest=dst, tag=_TAG)
        self._count(host, sent_copies=1)
        return _Request(self, request, f"send to {self.peer(dst)}", keep=host)

    def irecv(self, tensor: torch.Tensor, src: int | None = None) -> _Request:
        self._check_open()
        in_place = tensor.device.type == "cpu" and tensor.is_contiguous()
        host = tensor if in_place else torch.empty(tensor.shape, dtype=tensor.dtype)
        source = self._MPI.ANY_SOURCE if src is None else src
        with self.stats.timed():
            request = self._comm.Irecv(self._bytes(host), source=source, tag=_TAG)
        self._count(host, received_copies=1)
        what = f"recv from {self.peer(src) if src is not None else 'any party'}"
        return _Request(self, request, what, keep=host, host=host, target=tensor)

    # -- collectives ----------------------------------------------------------------------
    def _run(self, start: Any, what: str) -> None:
        self._check_open()
        with self.stats.timed():
            self._complete(start(), what)

    def broadcast(self, input: Any, src: int, group: Any = None, batched: bool = False) -> Any:
        """In place, like CrypTen's own communicator: receivers' tensors are overwritten."""
        tensors = list(input) if batched else [input]
        own = self.rank == src
        groups: dict[torch.dtype, list[int]] = {}
        for index, tensor in enumerate(tensors):
            groups.setdefault(tensor.dtype, []).append(index)
        for indices in groups.values():  # one message per dtype
            hosts = [_on_host(tensors[i]) for i in indices]
            flat = self._flatten(hosts).clone() if own or len(hosts) > 1 else hosts[0].reshape(-1).clone()
            self._run(lambda: self._comm.Ibcast(self._bytes(flat), root=src), f"broadcast from {self.peer(src)}")
            if not own:
                for i, piece in zip(indices, self._split(flat, hosts)):
                    # through the data: the target may be a parameter that requires grad
                    tensors[i].detach().copy_(to_device(piece, tensors[i].device))
            self._count(hosts, sent_copies=self.world_size - 1 if own else 0, received_copies=0 if own else 1)
        return tensors if batched else tensors[0]

    def _reduction(self, input: Any, op: Any, batched: bool, dst: int | None) -> Any:
        tensors = list(input) if batched else [input]
        results: list[torch.Tensor | None] = [None] * len(tensors)
        groups: dict[torch.dtype, list[int]] = {}
        for index, tensor in enumerate(tensors):
            groups.setdefault(tensor.dtype, []).append(index)
        mpi_op = self._mpi_op(op)
        for indices in groups.values():  # one message per dtype
            hosts = [_on_host(tensors[i]) for i in indices]
            flat = self._flatten(hosts).clone()
            out = torch.empty_like(flat)
            if dst is None:
                self._run(lambda: self._comm.Iallreduce(self._typed(flat, op), self._typed(out, op), op=mpi_op),
                          "all_reduce")
                share = 2 * (self.world_size - 1) / self.world_size
                self._count(hosts, sent_copies=share, received_copies=share)
            else:
                self._run(lambda: self._comm.Ireduce(self._typed(flat, op), self._typed(out, op), op=mpi_op,
                                                     root=dst), f"reduce at {self.peer(dst)}")
                own = self.rank == dst
                self._count(hosts, sent_copies=0 if own else 1, received_copies=self.world_size - 1 if own else 0)
            for i, piece in zip(indices, self._split(out, hosts)):
                results[i] = to_device(piece, tensors[i].device)
        if dst is not None and self.rank != dst:
            return None  # only the root holds the result
        return results if batched else results[0]

    def reduce(self, input: Any, dst: int, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        return self._reduction(input, op, batched, dst)

    def all_reduce(self, input: Any, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        return self._reduction(input, op, batched, None)

    def gather(self, tensor: torch.Tensor, dst: int) -> list[torch.Tensor | None]:
        host = _on_host(tensor)
        own = self.rank == dst
        out = torch.empty((self.world_size, *host.shape), dtype=host.dtype) if own else None
        receive = self._bytes(out) if own else None
        self._run(lambda: self._comm.Igather(self._bytes(host), receive, root=dst), f"gather at {self.peer(dst)}")
        if not own:
            self._count(host, sent_copies=1)
            return [None]
        self._count(host, received_copies=self.world_size - 1)
        return [to_device(piece, tensor.device) for piece in out.unbind(0)]

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        host = _on_host(tensor)
        out = torch.empty((self.world_size, *host.shape), dtype=host.dtype)
        self._run(lambda: self._comm.Iallgather(self._bytes(host), self._bytes(out)), "all_gather")
        self._count(host, sent_copies=self.world_size - 1, received_copies=self.world_size - 1)
        return [to_device(piece, tensor.device) for piece in out.unbind(0)]

    def scatter(self, scatter_list: list[torch.Tensor], src: int, size: Any = None,
                device: Any = None) -> torch.Tensor:
        if self.rank == src:
            hosts = [_on_host(piece) for piece in scatter_list]
            if len(hosts) != self.world_size or any(h.shape != hosts[0].shape or h.dtype != hosts[0].dtype
                                                    for h in hosts):
                raise TransportError("scatter needs one tensor per party, all of one shape and dtype")
            send = torch.stack(hosts)
            result = torch.empty_like(hosts[0])
            self._run(lambda: self._comm.Iscatter(self._bytes(send), self._bytes(result), root=src),
                      f"scatter from {self.peer(src)}")
            self._count([h for i, h in enumerate(hosts) if i != src], sent_copies=1)
            return to_device(result, scatter_list[self.rank].device)
        if size is None:
            size = scatter_list[self.rank].size()
        result = torch.empty(size=size, dtype=torch.long)
        self._run(lambda: self._comm.Iscatter(None, self._bytes(result), root=src), f"scatter from {self.peer(src)}")
        self._count(result, received_copies=1)
        return to_device(result, device) if device is not None else result

    def barrier(self) -> None:
        self._run(self._comm.Ibarrier, "barrier")
        self.stats.add(rounds=1)

    def abort(self, code: int = 1) -> None:
        """Stop every process of the MPI job now."""
        self._MPI.COMM_WORLD.Abort(code)

    def close(self) -> None:
        """Release the communicator; when closing because of an error, leave without finalizing.

        A failed party may have requests in flight that will never match, and MPI_Finalize
        would then wait for them forever. Such a party exits with status 1 at interpreter exit
        (after its error has been printed) without finalizing; mpirun sees the bad exit and
        stops every other rank, so the job ends non-zero instead of hanging.
        """
        if self._closed:
            return
        try:
            if sys.exc_info()[1] is None:
                self.barrier()  # a normal end: the peer watch stops only once every rank got this far
        finally:
            self._closed = True
            self._abort_at_exit = sys.exc_info()[1] is not None
            self._watch.stop(after_transport_error=failing_on_transport_error())
        if self._abort_at_exit:
            return
        try:
            self._comm.Free()
        except self._MPI.Exception:
            pass

    def _exit(self) -> None:
        if self._abort_at_exit:
            # MPI_Abort would be quicker but can lose the error message still in mpirun's
            # output pipes; a plain exit delivers every byte first
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
