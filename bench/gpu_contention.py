"""What one MPC round's small kernels cost on a device, alone and with other parties on it.

    .venv/bin/python bench/gpu_contention.py --device cuda
    .venv/bin/python bench/gpu_contention.py --device cpu

A W6 round does a few elementwise int64 operations on a batch-sized share and then hands the
result to the transport, which needs it in host memory. Each process here repeats that
pattern (``--kernels`` operations, then a copy to the host) and reports microseconds per round,
first with one process on the device, then with ``--processes`` processes at once, as when the
parties of a local job share one GPU. On a CPU the copy is a clone. Prints a table and one JSON
line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time

import torch


def _rounds(device: str, kernels: int, rounds: int, shape: tuple[int, int], start, times) -> None:
    generator = torch.Generator().manual_seed(0)
    share = torch.randint(-2**62, 2**62, shape, generator=generator).to(device)
    mask = torch.randint(-2**62, 2**62, shape, generator=generator).to(device)
    host = torch.empty(shape, dtype=torch.int64, pin_memory=device.startswith("cuda"))

    def one_round() -> None:
        value = share
        for _ in range(kernels):
            value = (value * mask + share) >> 3
        host.copy_(value)  # from a GPU: waits for the kernels, as the transport's staging does

    for _ in range(20):  # warm-up: CUDA context, allocator
        one_round()
    start.wait()
    began = time.perf_counter()
    for _ in range(rounds):
        one_round()
    times.put((time.perf_counter() - began) / rounds * 1e6)


def measure(device: str, processes: int, kernels: int, rounds: int, shape: tuple[int, int]) -> float:
    """Mean microseconds per round over ``processes`` processes running at once."""
    context = multiprocessing.get_context("spawn")
    start, times = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_rounds, args=(device, kernels, rounds, shape, start, times))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    per_round = [times.get(timeout=300) for _ in workers]
    for worker in workers:
        worker.join()
    return sum(per_round) / len(per_round)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--kernels", type=int, default=8, help="elementwise operations per round (each 3 kernels)")
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--cols", type=int, default=64)
    arguments = parser.parse_args()
    if arguments.device.startswith("cuda") and not torch.cuda.is_available():
        print("skipped: no CUDA device")
        return
    shape = (arguments.rows, arguments.cols)
    figures = {count: measure(arguments.device, count, arguments.kernels, arguments.rounds, shape)
               for count in (1, arguments.processes)}
    alone = figures[1]
    print(f"{arguments.device}: {arguments.kernels * 3} kernels and a host copy per round, {shape[0]}x{shape[1]} int64")
    for count, micros in figures.items():
        print(f"  {count} process(es) at once: {micros:8.1f} us per round ({micros / alone:.2f}x alone)")
    print(json.dumps({"device": arguments.device, "kernels_per_round": arguments.kernels * 3,
                      "us_per_round": {str(count): round(micros, 1) for count, micros in figures.items()}}))


if __name__ == "__main__":
    main()
