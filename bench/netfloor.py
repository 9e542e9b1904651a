"""This machine's loopback: one-way bandwidth and small-message round trip, measured with a
plain TCP socket between two processes. The benchmark's network floor is built from them.

The round trip is the loopback's own cost, not the scheduler's: on a shared machine most pings
also wait for the other process to be scheduled, so their median moved between runs (21 and
87 us). The pings come in bursts spread over the measurement, and the floor takes their 10th
percentile, which a load spike over part of the run does not move; the median is reported
beside it."""

from __future__ import annotations

import multiprocessing
import socket
import statistics
import struct
import time

_CHUNK = 1 << 20


def _serve(port_queue: "multiprocessing.Queue", pings: int, total: int) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port_queue.put(server.getsockname()[1])
        connection, _ = server.accept()
        with connection:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(pings):
                _read_exact(connection, 8)
                connection.sendall(b"\0" * 8)
            received, buffer = 0, bytearray(_CHUNK)
            while received < total:
                n = connection.recv_into(buffer)
                if not n:
                    break
                received += n
            connection.sendall(b"\1")


def _read_exact(connection: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        piece = connection.recv(n - len(data))
        if not piece:
            raise ConnectionError("loopback peer closed")
        data += piece
    return data


BURSTS = 20
RTT_PERCENTILE = 10


def low_percentile(times: list[float], percent: int = RTT_PERCENTILE) -> float:
    """The ``percent``-th percentile of ``times`` (nearest rank)."""
    ordered = sorted(times)
    return ordered[max(0, -(-len(ordered) * percent // 100) - 1)]


def measure_loopback(pings: int = 2000, megabytes: int = 256) -> dict[str, float]:
    """{"rtt_s": the 10th percentile round trip of 8 bytes, "rtt_median_s": their median,
    "bandwidth_Bps": bytes per second one way}."""
    context = multiprocessing.get_context("spawn")
    ports = context.Queue()
    total = megabytes * _CHUNK
    server = context.Process(target=_serve, args=(ports, pings, total), daemon=True)
    server.start()
    try:
        port = ports.get(timeout=30)
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            times = []
            for ping in range(pings):
                if ping % (pings // BURSTS or 1) == 0:
                    time.sleep(0.005)  # bursts spread over ~0.1 s more than the pings take
                start = time.perf_counter()
                client.sendall(struct.pack("<Q", 0))
                _read_exact(client, 8)
                times.append(time.perf_counter() - start)
            payload = memoryview(bytearray(_CHUNK))
            start = time.perf_counter()
            for _ in range(megabytes):
                client.sendall(payload)
            _read_exact(client, 1)
            seconds = time.perf_counter() - start
    finally:
        server.join(10)
        if server.is_alive():
            server.kill()
    return {"rtt_s": low_percentile(times), "rtt_median_s": statistics.median(times), "bandwidth_Bps": total / seconds}


if __name__ == "__main__":
    print(measure_loopback())
