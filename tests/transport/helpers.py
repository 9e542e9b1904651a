"""Shared helpers for transport tests: free ports, key sets, and N parties in N processes."""

from __future__ import annotations

import queue
import socket
import time
import traceback
from dataclasses import replace
from typing import Any, Callable

from launch.party_processes import party_context, start_party
from parties.transport import PartyAddress, TransportOptions


def free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out as free (held together, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def party_names(world_size: int) -> tuple[str, ...]:
    return tuple(f"p{rank}" for rank in range(world_size))


def zmq_options(world_size: int, key_dir: str = "", **overrides: Any) -> TransportOptions:
    """Options for a local zmq run on fresh ports; encrypted when ``key_dir`` is given."""
    ports = free_ports(world_size)
    peers = {name: f"tcp://127.0.0.1:{port}" for name, port in zip(party_names(world_size), ports)}
    options = TransportOptions(name="zmq", peers=peers, key_dir=key_dir, encrypt=bool(key_dir),
                               timeout_s=20.0, connect_timeout_s=20.0)
    return replace(options, **overrides)


def address(rank: int, world_size: int) -> PartyAddress:
    return PartyAddress(rank, world_size, party_names(world_size))


def _child(function: Callable[..., Any], rank: int, args: tuple, results: Any) -> None:
    try:
        results.put((rank, True, function(rank, *args)))
    except BaseException as error:  # report every failure to the parent, which asserts on it
        results.put((rank, False, (type(error).__name__, str(error), traceback.format_exc())))


def run_parties(function: Callable[..., Any], world_size: int, *args: Any,
                timeout_s: float = 60.0, ranks: list[int] | None = None) -> dict[int, tuple[bool, Any]]:
    """Run ``function(rank, *args)`` in one party process per rank.

    Returns rank → (ok, value) where value is the result, or (error type, message, traceback).
    A rank that reports nothing within ``timeout_s`` is killed and missing from the result.
    """
    ranks = list(range(world_size)) if ranks is None else ranks
    context = party_context()
    results = context.Queue()
    processes = [start_party(context, _child, (function, rank, args, results), f"p{rank}") for rank in ranks]
    collected: dict[int, tuple[bool, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while len(collected) < len(ranks) and time.monotonic() < deadline:
        try:
            rank, ok, value = results.get(timeout=0.2)
        except queue.Empty:
            if not any(process.is_alive() for process in processes):
                break  # a rank died without reporting
            continue
        collected[rank] = (ok, value)
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()) + 1)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)
    return collected


def values(results: dict[int, tuple[bool, Any]], world_size: int) -> list[Any]:
    """Every rank's result, failing with the children's tracebacks when one failed."""
    failures = [f"rank {rank}: {value[2] if not ok else ''}" for rank, (ok, value) in results.items() if not ok]
    missing = [rank for rank in range(world_size) if rank not in results]
    assert not failures and not missing, "\n".join(failures) + (f"\nno result from ranks {missing}" * bool(missing))
    return [results[rank][1] for rank in range(world_size)]
