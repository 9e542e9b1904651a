"""The computing parties as their own communicator, inside a larger transport world.

With a dealer, the transport's world is the parties plus the dealer (rank = number of
parties), while CrypTen's MPC world is the parties only: every collective (openings,
zero-sharing seeds, reveals) must leave the dealer out, the way CrypTen keeps its TTP out
of MPC with a separate group. :class:`PartyGroup` presents ranks ``0..size-1`` of a
transport as a world of ``size`` and builds each collective from the transport's
point-to-point messages, so it works over any transport. Point-to-point calls (and the
dealer's own traffic) still reach every rank of the underlying transport.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch

from parties.transport.base import reduce_exchanged
from protocols.share_tensors import to_device
from torch.distributed import ReduceOp


class PartyGroup:
    """Ranks ``0..size-1`` of ``transport`` as a world of their own (CrypTen's communicator)."""

    def __init__(self, transport: Any, size: int) -> None:
        if not 1 <= size <= transport.get_world_size():
            raise ValueError(f"a party group of {size} does not fit a world of {transport.get_world_size()}")
        self.transport = transport
        self.size = size
        self.rank = transport.get_rank()
        self.world_size = size
        self._peers = [rank for rank in range(size) if rank != self.rank]
        self.stats = transport.stats
        self.options = transport.options
        if self.rank >= size:
            raise ValueError(f"rank {self.rank} is not one of the {size} computing parties")

    def __getattr__(self, name: str) -> Any:  # names, stats printing, close, ...
        return getattr(self.transport, name)

    # -- identity -------------------------------------------------------------------------
    def get_rank(self) -> int:
        return self.rank

    def get_world_size(self) -> int:
        return self.size

    def _others(self) -> list[int]:
        return self._peers

    @contextmanager
    def _one_round(self) -> Iterator[None]:
        """A collective is one round, however many messages build it."""
        rounds = self.stats.rounds
        yield
        self.stats.rounds = rounds + 1

    # -- point to point: straight through ---------------------------------------------------
    def send(self, tensor: torch.Tensor, dst: int) -> None:
        self.transport.send(tensor, dst)

    def recv(self, tensor: torch.Tensor, src: int | None = None) -> torch.Tensor:
        return self.transport.recv(tensor, src)

    def isend(self, tensor: torch.Tensor, dst: int) -> Any:
        return self.transport.isend(tensor, dst)

    def irecv(self, tensor: torch.Tensor, src: int | None = None) -> Any:
        return self.transport.irecv(tensor, src)

    def send_obj(self, obj: Any, dst: int, group: Any = None) -> None:
        self.transport.send_obj(obj, dst)

    def recv_obj(self, src: int, group: Any = None) -> Any:
        return self.transport.recv_obj(src)

    # -- collectives from point-to-point messages ---------------------------------------------
    def _exchange(self, tensors: Sequence[torch.Tensor]) -> dict[int, list[torch.Tensor]]:
        host = [t.detach().cpu().contiguous() for t in tensors]
        sends = [self.transport.isend(t, dst) for dst in self._others() for t in host]
        received = {src: [torch.empty_like(t) for t in host] for src in self._others()}
        recvs = [self.transport.irecv(t, src) for src in self._others() for t in received[src]]
        for handle in sends + recvs:
            handle.wait()
        received[self.rank] = host
        return received

    def all_reduce(self, input: Any, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        tensors = list(input) if batched else [input]
        among = getattr(self.transport, "all_reduce_among", None)
        if among is not None:  # a message transport: one message per peer for all the tensors
            results = among(tensors, op, self._peers)
            self.stats.rounds += 1
            return results if batched else results[0]
        with self._one_round():
            received = self._exchange(tensors)
        results = [to_device(reduce_exchanged(received, self.rank, k, op), tensors[k].device) for k in range(len(tensors))]
        return results if batched else results[0]

    def reduce(self, input: Any, dst: int, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        tensors = list(input) if batched else [input]
        host = [t.detach().cpu().contiguous() for t in tensors]
        with self._one_round():
            if self.rank != dst:
                for handle in [self.transport.isend(t, dst) for t in host]:
                    handle.wait()
                return None
            received = {src: [torch.empty_like(t) for t in host] for src in self._others()}
            for handle in [self.transport.irecv(t, src) for src in self._others() for t in received[src]]:
                handle.wait()
            received[self.rank] = host
        results = [to_device(reduce_exchanged(received, self.rank, k, op), tensors[k].device) for k in range(len(tensors))]
        return results if batched else results[0]

    def broadcast(self, input: Any, src: int, group: Any = None, batched: bool = False) -> Any:
        tensors = list(input) if batched else [input]
        with self._one_round():
            if self.rank == src:
                host = [t.detach().cpu().contiguous() for t in tensors]
                for handle in [self.transport.isend(t, dst) for dst in self._others() for t in host]:
                    handle.wait()
            else:
                host = [torch.empty(t.shape, dtype=t.dtype) for t in tensors]
                for handle in [self.transport.irecv(t, src) for t in host]:
                    handle.wait()
                for target, value in zip(tensors, host):
                    target.detach().copy_(value)  # through the data: the target may require grad
        return tensors if batched else tensors[0]

    def gather(self, tensor: torch.Tensor, dst: int) -> list[torch.Tensor | None]:
        host = tensor.detach().cpu().contiguous()
        with self._one_round():
            if self.rank != dst:
                self.transport.isend(host, dst).wait()
                return [None]
            result = [host.clone() if r == dst else torch.empty_like(host) for r in range(self.size)]
            for handle in [self.transport.irecv(result[r], r) for r in self._others()]:
                handle.wait()
        return [to_device(item, tensor.device) for item in result]

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        with self._one_round():
            received = self._exchange([tensor])
        # our own entry is a copy: the caller may change its tensor afterwards
        return [received[r][0].clone() if r == self.rank else to_device(received[r][0], tensor.device)
                for r in range(self.size)]

    def scatter(self, scatter_list: list[torch.Tensor], src: int, size: Any = None, device: Any = None) -> torch.Tensor:
        with self._one_round():
            if self.rank == src:
                pieces = [p.detach().cpu().contiguous() for p in scatter_list]
                for handle in [self.transport.isend(pieces[r], r) for r in self._others()]:
                    handle.wait()
                return scatter_list[src].clone()
            shape = size if size is not None else scatter_list[self.rank].size()
            result = torch.empty(shape, dtype=torch.long)
            self.transport.irecv(result, src).wait()
        return to_device(result, device) if device is not None else result

    def barrier(self) -> None:
        with self._one_round():
            self._exchange([torch.zeros(1, dtype=torch.uint8)])

    # -- objects ------------------------------------------------------------------------------
    def broadcast_obj(self, obj: Any, src: int, group: Any = None) -> Any:
        if self.rank == src:
            for dst in self._others():
                self.transport.send_obj(obj, dst)
            return obj
        return self.transport.recv_obj(src)

    def gather_obj(self, obj: Any, dst: int) -> list[Any] | None:
        if self.rank != dst:
            self.transport.send_obj(obj, dst)
            return None
        return [obj if r == dst else self.transport.recv_obj(r) for r in range(self.size)]
