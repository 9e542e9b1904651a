"""How much memory an unauthenticated client can make a ZeroMQ party allocate.

    PYTHONPATH=. .venv/bin/python bench/memory_attack.py [--connections 3] [--mib 400]

Two parties open an encrypted zmq session and sit idle; raw TCP clients then connect to
party 0, start a CurveZMQ handshake (a ZMTP 3 greeting asking for CURVE) and, instead of a
HELLO, announce one enormous frame and stream bytes into it. The script prints party 0's
resident memory before the attack and its peak (VmHWM) after, and how many bytes the
party took from each client before it closed the connection.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import struct
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

# ZMTP 3.0 greeting: signature, version 3.0, mechanism "CURVE", as-server = 0, filler
GREETING = b"\xff" + bytes(8) + b"\x7f" + bytes([3, 0]) + b"CURVE".ljust(20, b"\x00") + b"\x00" + bytes(31)
LONG_COMMAND = 0x06  # frame flags: a command, with an 8-byte size


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def curve_flood(host: str, port: int, connections: int, bytes_each: int, announced: int = (1 << 31) - 1,
                timeout_s: float = 60.0) -> list[int]:
    """Each client announces a frame of ``announced`` bytes before any authentication and
    streams up to ``bytes_each`` into it; returns how many bytes each got into the party."""
    clients = []
    for _ in range(connections):
        client = socket.create_connection((host, port), timeout=timeout_s)
        client.sendall(GREETING + bytes([LONG_COMMAND]) + struct.pack(">Q", announced))
        clients.append(client)
    block = bytes(1 << 20)
    sent = [0] * connections
    open_clients = set(range(connections))
    deadline = time.monotonic() + timeout_s
    while open_clients and time.monotonic() < deadline:
        for index in list(open_clients):
            if sent[index] >= bytes_each:
                open_clients.discard(index)
                continue
            try:
                sent[index] += clients[index].send(block[: bytes_each - sent[index]])
            except OSError:  # the party closed the connection: it refused the frame
                open_clients.discard(index)
    time.sleep(1.0)  # let the party read what is in flight before anyone measures
    for client in clients:
        client.close()
    return sent


def _idle_party(rank: int, options: Any, ready: Any, stop: Any) -> None:
    from parties.transport import PartyAddress, open_transport

    transport = open_transport(PartyAddress(rank, 2, ("p0", "p1")), options)
    transport.barrier()
    ready.put(rank)
    stop.wait(600)
    transport.close()


def idle_session(key_dir: str, ports: list[int]) -> tuple[list[Any], Any]:
    """Two parties in an encrypted zmq session, idle until the returned event is set."""
    from parties.transport import TransportOptions
    from parties.transport.keys import generate_party_keys

    generate_party_keys(key_dir, ["p0", "p1"])
    options = replace(TransportOptions(name="zmq", key_dir=key_dir, timeout_s=60),
                      peers={f"p{rank}": f"tcp://127.0.0.1:{port}" for rank, port in enumerate(ports)})
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Queue(), context.Event()
    processes = [context.Process(target=_idle_party, args=(rank, options, ready, stop)) for rank in (0, 1)]
    for process in processes:
        process.start()
    for _ in processes:
        ready.get(timeout=120)
    return processes, stop


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=3)
    parser.add_argument("--mib", type=int, default=400, help="bytes each client tries to push, in MiB")
    parser.add_argument("--announce", type=int, default=(1 << 31) - 1,
                        help="the frame size each client announces (default: 2 GiB - 1)")
    arguments = parser.parse_args()
    ports = free_ports(2)
    with tempfile.TemporaryDirectory() as key_dir:
        processes, stop = idle_session(key_dir, ports)
        try:
            victim = processes[0].pid
            before = memory_kib(victim)
            sent = curve_flood("127.0.0.1", ports[0], arguments.connections, arguments.mib << 20,
                               arguments.announce)
            after = memory_kib(victim)
        finally:
            stop.set()
            for process in processes:
                process.join(30)
    print(f"{arguments.connections} unauthenticated connections, each announcing a frame of "
          f"{arguments.announce} bytes and trying to push {arguments.mib} MiB")
    print(f"bytes the party accepted per connection: {', '.join(f'{s / 2**20:.1f} MiB' for s in sent)}")
    print(f"party 0 RSS before: {before['VmRSS'] / 1024:.0f} MiB; peak after: {after['VmHWM'] / 1024:.0f} MiB "
          f"(growth {(after['VmHWM'] - before['VmRSS']) / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
