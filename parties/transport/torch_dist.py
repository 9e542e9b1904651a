"""torch.distributed (gloo) transport: CrypTen's own wire, with timeouts and accounting.

Objects travel as msgpack (see ``base``), never as CrypTen's pickles. CUDA tensors are
staged through host memory because gloo moves only CPU tensors point to point.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.distributed import ReduceOp

from parties.transport.base import PartyAddress, Transport, TransportError, TransportOptions
from parties.transport.peer_watch import PeerWatch, failing_on_transport_error
from protocols.share_tensors import to_device


class _StagedRequest:
    """A pending gloo request that copies a host buffer back to the caller's device."""

    def __init__(self, work: Any, host: torch.Tensor, target: torch.Tensor, describe: str,
                 transport: "TorchDistributedTransport") -> None:
        self._work, self._host, self._target, self._describe = work, host, target, describe
        self._transport = transport

    def wait(self) -> None:
        self._transport.in_flight = self._describe
        try:
            self._work.wait()
        except RuntimeError as error:
            raise TransportError(f"{self._describe} failed: {error}") from None
        self._transport.in_flight = None
        if self._host is not self._target:
            self._target.copy_(self._host)

    def is_completed(self) -> bool:
        return self._work.is_completed()


def _agent_hosts_store(options: TransportOptions) -> bool:
    """Under torchrun the elastic agent already serves the store at MASTER_ADDR:MASTER_PORT."""
    return (os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
            and os.environ.get("MASTER_PORT") == str(options.master_port))


def _on_host(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous() if tensor.device.type != "cpu" else tensor.detach()


class TorchDistributedTransport(Transport):
    """Transport over a torch.distributed process group (gloo)."""

    def __init__(self, address: PartyAddress, options: TransportOptions, backend: str = "gloo") -> None:
        super().__init__(address, options)
        if dist.is_initialized():
            raise TransportError("torch.distributed is already initialised in this process")
        store = self._join_store(backend)
        try:
            dist.init_process_group(
                backend,
                store=store,
                rank=self.rank,
                world_size=self.world_size,
                timeout=timedelta(seconds=options.timeout_s),
            )
        except (RuntimeError, dist.DistError) as error:
            raise TransportError(
                f"{self.peer(self.rank)} could not form the {backend} group: {str(error).splitlines()[0]}"
            ) from None
        self._group = dist.group.WORLD
        self.in_flight: str | None = None  # read by the peer watch
        self._watch = PeerWatch(self)

    def _join_store(self, backend: str) -> dist.TCPStore:
        """Rendezvous at rank 0's store; each party signs in so a missing one can be named."""
        options = self.options
        where = f"{options.master_addr}:{options.master_port}"
        try:
            store = dist.TCPStore(
                options.master_addr,
                options.master_port,
                world_size=self.world_size,
                is_master=self.rank == 0 and not _agent_hosts_store(options),
                timeout=timedelta(seconds=options.connect_timeout_s),
                wait_for_workers=False,
            )
        except (RuntimeError, dist.DistError) as error:
            raise TransportError(
                f"{self.peer(self.rank)} could not reach {self.peer(0)} at {where} within "
                f"transport.connect_timeout_s={options.connect_timeout_s:g} "
                f"({str(error).splitlines()[0]})"
            ) from None
        store.set(f"cotrain/joined/{self.rank}", self.get_name())
        deadline = time.monotonic() + options.connect_timeout_s
        while True:
            missing = [r for r in range(self.world_size) if not store.check([f"cotrain/joined/{r}"])]
            if not missing:
                return store
            if time.monotonic() > deadline:
                names = ", ".join(self.peer(r) for r in missing)
                raise TransportError(
                    f"{self.peer(self.rank)}: {names} never joined the {backend} group at {where} "
                    f"within transport.connect_timeout_s={options.connect_timeout_s:g}"
                )
            time.sleep(0.05)

    @contextmanager
    def _operation(self, what: str) -> Iterator[None]:
        self.in_flight = what
        with self.stats.timed():
            try:
                yield
            except (RuntimeError, dist.DistError) as error:
                first_line = str(error).splitlines()[0] if str(error) else error.__class__.__name__
                when = f" within transport.timeout_s={self.options.timeout_s:g}" if "timed out" in first_line.lower() else ""
                raise TransportError(f"{self.peer(self.rank)}: {what} failed{when} (gloo: {first_line})") from None
        self.in_flight = None

    # -- point to point -------------------------------------------------------------------
    def send(self, tensor: torch.Tensor, dst: int) -> None:
        with self._operation(f"send to {self.peer(dst)}"):
            dist.send(_on_host(tensor), dst)
        self._count(tensor, sent_copies=1)

    def recv(self, tensor: torch.Tensor, src: int | None = None) -> torch.Tensor:
        # a fresh buffer, not a copy of the caller's (whose values the message overwrites): the
        # caller's tensor stays as it was, as with CrypTen's recv, without a pass over it
        host = torch.empty_like(tensor, device="cpu", memory_format=torch.contiguous_format)
        with self._operation(f"recv from {self.peer(src) if src is not None else 'any party'}"):
            dist.recv(host, src)
        self._count(tensor, received_copies=1)
        return to_device(host, tensor.device)

    def isend(self, tensor: torch.Tensor, dst: int) -> _StagedRequest:
        host = _on_host(tensor)
        with self._operation(f"isend to {self.peer(dst)}"):
            work = dist.isend(host, dst)
        self._count(tensor, sent_copies=1)
        return _StagedRequest(work, host, host, f"isend to {self.peer(dst)}", self)

    def irecv(self, tensor: torch.Tensor, src: int | None = None) -> _StagedRequest:
        host = _on_host(tensor)
        with self._operation(f"irecv from {self.peer(src)}"):
            work = dist.irecv(host, src)
        self._count(tensor, received_copies=1)
        return _StagedRequest(work, host, tensor, f"irecv from {self.peer(src)}", self)

    # -- collectives ----------------------------------------------------------------------
    def scatter(self, scatter_list: list[torch.Tensor], src: int, size: Any = None,
                device: Any = None) -> torch.Tensor:
        if self.rank == src:
            pieces = [_on_host(piece) for piece in scatter_list]
            result = pieces[self.rank].clone()
            with self._operation(f"scatter from {self.peer(src)}"):
                dist.scatter(result, pieces, src)
            self._count([p for i, p in enumerate(pieces) if i != src], sent_copies=1)
            return to_device(result, scatter_list[self.rank].device)
        if size is None:
            size = scatter_list[self.rank].size()
        result = torch.empty(size=size, dtype=torch.long)
        with self._operation(f"scatter from {self.peer(src)}"):
            dist.scatter(result, [], src)
        self._count(result, received_copies=1)
        return to_device(result, device) if device is not None else result

    def reduce(self, input: Any, dst: int, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        tensors = list(input) if batched else [input]
        results = [_on_host(tensor).clone() for tensor in tensors]
        with self._operation(f"reduce at {self.peer(dst)}"):
            works = [dist.reduce(result, dst, op=op, async_op=True) for result in results]
            for work in works:
                work.wait()
        own = self.rank == dst
        self._count(tensors, sent_copies=0 if own else 1, received_copies=self.world_size - 1 if own else 0)
        if not own:
            return None
        results = [to_device(result, tensor.device) for result, tensor in zip(results, tensors)]
        return results if batched else results[0]

    def all_reduce(self, input: Any, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        tensors = list(input) if batched else [input]
        results = [_on_host(tensor) for tensor in tensors]  # copied below: all_reduce works in place
        with self._operation("all_reduce"):
            if len(results) == 1:  # an opening: the synchronous call skips a hand-off to a work thread
                results = [results[0].clone()]
                dist.all_reduce(results[0], op=op)
            elif all(result.dtype == results[0].dtype for result in results):
                # a batch (Beaver's two openings): one message instead of one per tensor
                flat = torch.cat([result.reshape(-1) for result in results])
                dist.all_reduce(flat, op=op)
                results = list(flat.split([result.numel() for result in results]))
                results = [piece.view(result.shape) for piece, result in zip(results, tensors)]
            else:
                results = [result.clone() for result in results]
                works = [dist.all_reduce(result, op=op, async_op=True) for result in results]
                for work in works:
                    work.wait()
        # gloo's ring all-reduce moves 2(n-1)/n of the data each way
        share = 2 * (self.world_size - 1) / self.world_size
        self._count(tensors, sent_copies=share, received_copies=share)
        results = [to_device(result, tensor.device) for result, tensor in zip(results, tensors)]
        return results if batched else results[0]

    def gather(self, tensor: torch.Tensor, dst: int) -> list[torch.Tensor | None]:
        host = _on_host(tensor)
        if self.rank == dst:
            result = [torch.empty_like(host) for _ in range(self.world_size)]
            with self._operation(f"gather at {self.peer(dst)}"):
                dist.gather(host, result, dst)
            self._count(tensor, received_copies=self.world_size - 1)
            return [to_device(item, tensor.device) for item in result]
        with self._operation(f"gather at {self.peer(dst)}"):
            dist.gather(host, [], dst)
        self._count(tensor, sent_copies=1)
        return [None]

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        host = _on_host(tensor)
        result = [torch.empty_like(host) for _ in range(self.world_size)]
        with self._operation("all_gather"):
            dist.all_gather(result, host)
        self._count(tensor, sent_copies=self.world_size - 1, received_copies=self.world_size - 1)
        return [to_device(item, tensor.device) for item in result]

    def broadcast(self, input: Any, src: int, group: Any = None, batched: bool = False) -> Any:
        """In place, like CrypTen's own communicator: receivers' tensors are overwritten."""
        tensors = list(input) if batched else [input]
        hosts = [_on_host(tensor) for tensor in tensors]
        with self._operation(f"broadcast from {self.peer(src)}"):
            works = [dist.broadcast(host, src, async_op=True) for host in hosts]
            for work in works:
                work.wait()
        for host, tensor in zip(hosts, tensors):
            if host.data_ptr() != tensor.data_ptr():
                tensor.detach().copy_(host)  # through the data: the target may require grad
        own = self.rank == src
        self._count(tensors, sent_copies=self.world_size - 1 if own else 0, received_copies=0 if own else 1)
        return tensors if batched else tensors[0]

    def barrier(self) -> None:
        with self._operation("barrier"):
            dist.barrier()
        self.stats.add(rounds=1)

    def close(self) -> None:
        """A normal end passes a closing barrier before the peer watch stops, so a peer that
        exits right after is no failure; after an error, leave at once."""
        if not dist.is_initialized():
            return
        try:
            if sys.exc_info()[1] is None:
                with self._operation("the closing barrier"):  # bookkeeping, not a protocol round
                    dist.barrier()
        finally:
            self._watch.stop(after_transport_error=failing_on_transport_error())
            dist.destroy_process_group()
