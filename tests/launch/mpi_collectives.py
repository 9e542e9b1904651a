"""Run under ``mpirun -n N``: every MpiTransport operation against a local reference.

Prints ``OK <rank>`` on success; any mismatch raises (non-zero exit). Used by test_mpirun.py.
"""

from __future__ import annotations

import os
import sys

import torch
from torch.distributed import ReduceOp

from parties.transport import PartyAddress, TransportOptions, open_transport


DEVICE = torch.device("cpu")  # `mpi_collectives.py N cuda`: every tensor lives on the GPU


def values(rank: int, shape: tuple[int, ...], dtype: torch.dtype = torch.int64, salt: int = 0) -> torch.Tensor:
    """Rank-specific data every rank can recompute; int64 spans the full range to test wrap-around."""
    generator = torch.Generator().manual_seed(1000 * rank + salt)
    if dtype == torch.int64:
        return torch.randint(-2**63, 2**63 - 1, shape, dtype=dtype, generator=generator).to(DEVICE)
    return torch.randn(shape, generator=generator).to(dtype).to(DEVICE)


def wrapped_sum(tensors: list[torch.Tensor]) -> torch.Tensor:
    result = tensors[0].clone()
    for tensor in tensors[1:]:
        result = result + tensor  # torch int64 addition wraps modulo 2^64
    return result


def xor_all(tensors: list[torch.Tensor]) -> torch.Tensor:
    result = tensors[0].clone()
    for tensor in tensors[1:]:
        result = result ^ tensor
    return result


def main() -> None:
    global DEVICE
    world = int(sys.argv[1])
    if len(sys.argv) > 2:
        from parties.devices import party_device

        DEVICE = torch.device(party_device(sys.argv[2], int(os.environ.get("PMI_RANK", "0"))))
    from mpi4py import MPI

    rank = MPI.COMM_WORLD.Get_rank()
    transport = open_transport(PartyAddress(rank, world, tuple(f"p{i}" for i in range(world))),
                               TransportOptions(name="mpi", timeout_s=30))
    every = range(world)
    shape = (5, 3)
    try:
        # point to point: a ring, blocking and non-blocking
        nxt, prv = (rank + 1) % world, (rank - 1) % world
        got = torch.zeros(shape, dtype=torch.int64, device=DEVICE)
        requests = [transport.isend(values(rank, shape), nxt), transport.irecv(got, prv)]
        for request in requests:
            request.wait()
        assert torch.equal(got, values(prv, shape)), "isend/irecv"
        # into an expanded tensor: stride 0 on its size-1 dimensions, and "contiguous"
        single = torch.empty_like(torch.tensor(0).expand(1, 1))
        requests = [transport.isend(torch.tensor(rank).expand(1, 1), nxt), transport.irecv(single, prv)]
        for request in requests:
            request.wait()
        assert single.item() == prv, "irecv into an expanded tensor"
        if rank == 0:
            transport.send(values(0, (7,), torch.float32), 1)
        elif rank == 1:
            received = transport.recv(torch.empty(7, device=DEVICE), 0)
            assert received.device == DEVICE and torch.equal(received, values(0, (7,), torch.float32)), "send/recv"
        # collectives
        mine = values(rank, shape)
        assert transport.all_reduce(mine).device == DEVICE, "results stay on the caller's device"
        assert torch.equal(transport.all_reduce(mine), wrapped_sum([values(r, shape) for r in every])), "all_reduce"
        assert torch.equal(transport.all_reduce(mine, op=ReduceOp.BXOR),
                           xor_all([values(r, shape) for r in every])), "all_reduce BXOR"
        batch = [values(rank, shape, salt=1), values(rank, (2,), salt=2), values(rank, (4, 1), torch.float32, 3)]
        summed = transport.all_reduce(batch, batched=True)
        assert torch.equal(summed[0], wrapped_sum([values(r, shape, salt=1) for r in every])), "batched all_reduce"
        assert torch.equal(summed[1], wrapped_sum([values(r, (2,), salt=2) for r in every])), "batched all_reduce"
        assert torch.allclose(summed[2], sum(values(r, (4, 1), torch.float32, 3) for r in every)), "float all_reduce"
        reduced = transport.reduce(batch[:2], 1, op=ReduceOp.BXOR, batched=True)
        if rank == 1:
            assert torch.equal(reduced[1], xor_all([values(r, (2,), salt=2) for r in every])), "reduce BXOR"
        reduced = transport.reduce(mine, 0)
        if rank == 0:
            assert torch.equal(reduced, wrapped_sum([values(r, shape) for r in every])), "reduce"
        else:
            assert reduced is None, "reduce at a non-destination"
        shared = values(rank, shape) if rank == 1 else torch.zeros(shape, dtype=torch.int64, device=DEVICE)
        transport.broadcast(shared, 1)
        assert torch.equal(shared, values(1, shape)), "broadcast"
        pair = [values(rank, shape, salt=4), values(rank, (3,), torch.float64, 5)]
        if rank != 0:
            pair = [torch.zeros_like(t) for t in pair]
        transport.broadcast(pair, 0, batched=True)
        assert torch.equal(pair[0], values(0, shape, salt=4)), "batched broadcast"
        assert torch.equal(pair[1], values(0, (3,), torch.float64, 5)), "batched broadcast (float64)"
        gathered = transport.gather(mine, 2 % world)
        if rank == 2 % world:
            assert all(torch.equal(g, values(r, shape)) for r, g in zip(every, gathered)), "gather"
        else:
            assert gathered == [None], "gather at a non-destination"
        assert all(torch.equal(g, values(r, shape)) for r, g in zip(every, transport.all_gather(mine))), "all_gather"
        pieces = [values(r, shape, salt=6) for r in every] if rank == 0 else []
        piece = transport.scatter(pieces, 0, size=shape, device=DEVICE)
        assert torch.equal(piece, values(rank, shape, salt=6)), "scatter"
        # objects (msgpack over raw buffers) and a barrier
        assert transport.broadcast_obj({"run": "x", "n": [1, 2]} if rank == 0 else None, 0) == {"run": "x", "n": [1, 2]}
        reports = transport.gather_obj({"rank": rank}, 0)
        assert rank != 0 or reports == [{"rank": r} for r in every], "gather_obj"
        carried = transport.broadcast_obj({"w": [values(1, shape)]} if rank == 1 else None, 1)
        assert torch.equal(carried["w"][0], values(1, shape).cpu()), "tensors inside objects"
        parameter = torch.nn.Parameter(torch.full((3,), float(rank)))
        transport.broadcast(parameter, 0)  # through the data, like CrypTen's tests syncing weights
        assert torch.equal(parameter.detach(), torch.zeros(3)) and parameter.grad_fn is None, "broadcast into a parameter"
        transport.barrier()
        stats = transport.stats
        assert stats.bytes_sent > 0 and stats.rounds > 10, stats
    finally:
        transport.close()
    print(f"OK {rank} sent={stats.bytes_sent} received={stats.bytes_received} rounds={stats.rounds}", flush=True)


if __name__ == "__main__":
    main()
