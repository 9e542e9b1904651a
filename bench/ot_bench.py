"""OT triple throughput: elementwise and matmul triples' cross products, two party processes.

    .venv/bin/python bench/ot_bench.py [--triples 200000] [--repeat 3] [--compare /path/to/other/checkout]

Two processes (one per party, joined by a socket pair) run the two-party OT suite's Gilboa
products; prints elementwise triples per second per party (wall clock, and per second of
the party's CPU time, which is what a busy machine still measures), bytes per triple, and the time
of the W6-shaped matmul triple (512 x 32 @ 32 x 64), by Gilboa and, where TenSEAL is installed,
by BFV (``protocols.he_matmul``), for this checkout and, with
``--compare``, another one (e.g. the code before a change) side by side.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
MATMUL = (512, 32, 64)


class _Handle:
    def __init__(self, wait: Any = None) -> None:
        self._wait = wait

    def wait(self) -> None:
        if self._wait is not None:
            self._wait()


class SocketComm:
    """The transport surface the OT channel uses, over one end of a socket pair: each message
    is a length then the raw bytes, written from a sender thread (so both parties can send
    large messages at once) and read straight into the receiving tensor (one copy each way,
    like a plain TCP transport)."""

    def __init__(self, rank: int, connection: socket.socket) -> None:
        self.rank, self.connection, self.sent = rank, connection, 0
        self.outbox: queue.Queue = queue.Queue()
        threading.Thread(target=self._sender, daemon=True).start()

    def _sender(self) -> None:
        while True:
            data, done = self.outbox.get()
            self.connection.sendall(struct.pack("<q", len(data)))
            self.connection.sendall(data)
            done.set()

    def _read_into(self, buffer: memoryview) -> None:
        while len(buffer):
            got = self.connection.recv_into(buffer)
            if not got:
                raise ConnectionError("the peer closed the socket")
            buffer = buffer[got:]

    def _receive(self) -> bytearray:
        length = bytearray(8)
        self._read_into(memoryview(length))
        data = bytearray(struct.unpack("<q", length)[0])
        self._read_into(memoryview(data))
        return data

    def get_rank(self) -> int:
        return self.rank

    def get_world_size(self) -> int:
        return 2

    def send_obj(self, obj: bytes, peer: int) -> None:
        self.isend(torch.frombuffer(bytearray(obj), dtype=torch.uint8), peer).wait()

    def recv_obj(self, peer: int) -> bytes:
        return bytes(self._receive())

    def isend(self, tensor: torch.Tensor, peer: int) -> _Handle:
        data = memoryview(tensor.contiguous().numpy()).cast("B")  # read by the thread before wait() returns
        self.sent += len(data)
        done = threading.Event()
        self.outbox.put((data, done))
        return _Handle(done.wait)

    def irecv(self, tensor: torch.Tensor, peer: int) -> _Handle:
        def receive() -> None:
            length = bytearray(8)
            self._read_into(memoryview(length))
            target = memoryview(tensor.view(-1).view(torch.uint8).numpy()).cast("B")
            if struct.unpack("<q", length)[0] != len(target):
                raise ConnectionError(f"expected {len(target)} bytes, the peer sent {struct.unpack('<q', length)[0]}")
            self._read_into(target)
        return _Handle(receive)


def _party(rank: int, connection: Any, triples: int, repeat: int, results: Any) -> None:
    from protocols.ot import GilboaEngine, OtChannel

    torch.set_num_threads(1)
    comm = SocketComm(rank, connection)
    rng = np.random.default_rng(rank)
    words = lambda *shape: rng.integers(0, 2**64 - 1, size=shape, dtype=np.uint64, endpoint=True)  # noqa: E731
    start = time.perf_counter()
    engine = GilboaEngine(OtChannel(comm, 1 - rank))
    engine.run([engine.plan_elementwise(words(1000), words(1000))])  # warm up (compiles what is compiled)
    setup = time.perf_counter() - start
    x, y = words(triples), words(triples)
    times, cpu, sent = [], [], comm.sent
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        engine.run([engine.plan_elementwise(x, y)])
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    per_triple = (comm.sent - sent) / repeat / triples
    m, k, n = MATMUL
    start, start_cpu, sent = time.perf_counter(), time.process_time(), comm.sent
    engine.run([engine.plan_matmul(words(m, k), words(k, n))])
    figures = {"setup_s": setup, "best_s": min(times), "cpu_s": min(cpu), "sent_per_triple": per_triple,
               "matmul_s": time.perf_counter() - start, "matmul_cpu_s": time.process_time() - start_cpu,
               "matmul_mb": (comm.sent - sent) / 1e6}
    results.put((rank, figures | _he_matmul(comm, rank, words(m, k), words(k, n))))


def _he_matmul(comm: SocketComm, rank: int, a: np.ndarray, b: np.ndarray) -> dict:
    """The same product's cross terms from BFV (triple_source=ot_he), where TenSEAL is installed."""
    try:
        from protocols.he_matmul import HeMatmul
    except ImportError:
        return {}
    start = time.perf_counter()
    engine = HeMatmul(comm, 1 - rank)
    setup, sent = time.perf_counter() - start, comm.sent
    start, start_cpu = time.perf_counter(), time.process_time()
    engine.cross([(a, b)])
    return {"he_setup_s": setup, "he_matmul_s": time.perf_counter() - start,
            "he_matmul_cpu_s": time.process_time() - start_cpu, "he_matmul_mb": (comm.sent - sent) / 1e6}


def measure(triples: int, repeat: int) -> dict:
    """Both parties in their own processes; the slower party's figures."""
    context = multiprocessing.get_context("spawn")
    ends, results = socket.socketpair(), context.Queue()
    processes = [context.Process(target=_party, args=(rank, ends[rank], triples, repeat, results)) for rank in (0, 1)]
    for process in processes:
        process.start()
    per_rank = dict(results.get(timeout=1800) for _ in processes)
    for process in processes:
        process.join(60)
    slow = {key: max(r[key] for r in per_rank.values()) for key in per_rank[0]}
    return {**slow, "triples_per_s": triples / slow["best_s"], "triples_per_cpu_s": triples / slow["cpu_s"]}


def _measure_checkout(checkout: str, triples: int, repeat: int) -> dict:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [checkout, os.environ.get("PYTHONPATH")])), "OMP_NUM_THREADS": "1"}
    output = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--triples", str(triples),
                             "--repeat", str(repeat), "--json"], env=environment, check=True,
                            capture_output=True, text=True, cwd=checkout).stdout
    return json.loads(output.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triples", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--compare", default="", help="another checkout to measure the same way")
    parser.add_argument("--json", action="store_true", help="print this checkout's figures as one JSON line")
    args = parser.parse_args(argv)
    if args.json:
        sys.path.insert(0, os.getcwd())
        print(json.dumps(measure(args.triples, args.repeat)))
        return {}
    checkouts = {"this": str(ROOT)} | ({"compare": str(Path(args.compare).resolve())} if args.compare else {})
    figures = {name: _measure_checkout(path, args.triples, args.repeat) for name, path in checkouts.items()}
    m, k, n = MATMUL
    print(f"{'checkout':<10} {'triples/s/party':>16} {'per CPU second':>15} {'bytes/triple/party':>19} "
          f"{'setup s':>8} {f'matmul {m}x{k}x{n} s':>20} {'its CPU s':>10} {'its MB/party':>13}")
    for name, row in figures.items():
        print(f"{name:<10} {row['triples_per_s']:>16,.0f} {row['triples_per_cpu_s']:>15,.0f} "
              f"{row['sent_per_triple']:>19,.0f} {row['setup_s']:>8.2f} {row['matmul_s']:>20.2f} "
              f"{row.get('matmul_cpu_s', float('nan')):>10.2f} {row.get('matmul_mb', float('nan')):>13.1f}")
        if "he_matmul_s" in row:
            print(f"{name:<10} the same matmul from BFV (ot_he): {row['he_matmul_s']:.2f} s, {row['he_matmul_cpu_s']:.2f} "
                  f"CPU s, {row['he_matmul_mb']:.1f} MB/party (keys and public-key exchange once: {row['he_setup_s']:.2f} s)")
    return figures


if __name__ == "__main__":
    main()
