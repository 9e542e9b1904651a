"""Round trip and bandwidth of a transport, measured through the Transport surface itself.

    .venv/bin/mpirun -n 2 .venv/bin/python bench/transport_bench.py            # MPI, CPU tensors
    .venv/bin/mpirun -n 2 .venv/bin/python bench/transport_bench.py --device cuda

Rank 0 prints: small-message round trip (µs), ping-pong bandwidth per size (GB/s), and the
time of an int64 all_reduce of one batch-sized share.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from parties.devices import party_device
from parties.transport import PartyAddress, TransportOptions, open_transport


def _ping_pong(transport, rank: int, peer: int, tensor: torch.Tensor) -> float:
    """Seconds for ``tensor`` to go to the peer and come back."""
    start = time.perf_counter()
    if rank == 0:
        transport.send(tensor, peer)
        transport.recv(tensor, peer)
    else:
        transport.recv(tensor, peer)
        transport.send(tensor, peer)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--transport", default="mpi")
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[0.001, 1, 16, 64])
    arguments = parser.parse_args()
    from mpi4py import MPI

    rank, world = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
    device = torch.device(party_device(arguments.device, int(os.environ.get("PMI_RANK", rank))))
    transport = open_transport(PartyAddress(rank, world, tuple(f"p{i}" for i in range(world))),
                               TransportOptions(name=arguments.transport, timeout_s=120))
    peer = 1 - rank if rank < 2 else None
    lines = [f"transport={arguments.transport} device={device} parties={world}"]
    try:
        if peer is not None:
            tiny = torch.zeros(1, dtype=torch.int64, device=device)
            trips = [_ping_pong(transport, rank, peer, tiny) for _ in range(200)]
            lines.append(f"  round trip (8 B): {statistics.median(trips) * 1e6:8.1f} us")
            for size_mb in arguments.sizes_mb:
                tensor = torch.ones(max(1, int(size_mb * 2**20 / 8)), dtype=torch.int64, device=device)
                repeats = 5 if size_mb >= 1 else 100
                seconds = sum(_ping_pong(transport, rank, peer, tensor) for _ in range(repeats)) / (2 * repeats)
                lines.append(f"  one way {size_mb:>8g} MB: {tensor.numel() * 8 / seconds / 1e9:8.2f} GB/s")
        share = torch.randint(0, 2**62, (128, 64), device=device)
        transport.barrier()
        start = time.perf_counter()
        for _ in range(100):
            transport.all_reduce(share)
        lines.append(f"  all_reduce of a 128x64 int64 share: {(time.perf_counter() - start) * 1e4:8.1f} us")
    finally:
        transport.close()
    if rank == 0:
        print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
