"""Run a function in N real party processes, each inside a secure session."""

from __future__ import annotations

import json
import queue
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from launch.local import free_port
from launch.party_processes import core_share, party_context, start_party
from parties.transport import PartyAddress, TransportOptions, open_transport


_RESULT_WAIT_S = 120.0  # how long a party waits for the test to take its result


def _party(fn: Callable, rank: int, world: int, port: int, options: dict, protocol: dict, results: Any,
           taken: Any) -> None:
    from mpc.session import MpcSession
    from protocols import ProtocolConfig, ProtocolSuite

    try:
        address = PartyAddress(rank, world, tuple(f"party{i}" for i in range(world)))
        transport = open_transport(address, TransportOptions(**{"name": "gloo", "master_port": port, **options}))
        try:  # tfp: no dealer process, and these sessions test the engine, not the triple source
            suite = ProtocolSuite(ProtocolConfig(**{"name": "tfp", "triple_source": "tfp", **protocol}))
            with MpcSession(transport, suite) as crypten:
                results.put((rank, "ok", fn(crypten, rank)))
        finally:
            transport.close()
    except BaseException as error:  # report to the test instead of dying silently
        results.put((rank, "error", f"{error.__class__.__name__}: {error}\n{traceback.format_exc()}"))
    # a tensor in the queue travels as a file descriptor this process hands out on request:
    # stay until the test has taken every result
    taken.wait(_RESULT_WAIT_S)


def run_parties(fn: Callable[[Any, int], Any], world: int = 2, timeout_s: float = 120.0,
                protocol: dict | None = None, **options: Any) -> list[Any]:
    """``fn(crypten, rank)`` in each party; returns the results in rank order. ``protocol``:
    ProtocolConfig settings over tfp's; ``options``: the transport's."""
    context = party_context()
    results, taken = context.Queue(), context.Event()
    port = free_port()
    threads = core_share(world)  # as the local launcher: idle OpenMP workers spin on shared cores
    processes = [start_party(context, _party, (fn, rank, world, port, options, protocol or {}, results, taken),
                             f"party{rank}", threads) for rank in range(world)]
    collected: dict[int, Any] = {}
    try:
        for _ in range(world):
            rank, status, value = results.get(timeout=timeout_s)
            if status == "error":
                raise AssertionError(f"party {rank} failed: {value}")
            collected[rank] = value
    except queue.Empty:
        raise AssertionError(f"parties did not finish within {timeout_s} s") from None
    finally:
        taken.set()
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
    return [collected[rank] for rank in range(world)]


def collect_results(results: Any, processes: list, timeout_s: float, join_s: float) -> dict[int, tuple[str, Any]]:
    """{rank: (status, value)} as each process (process i is rank i) puts its result, until all
    have, ``timeout_s`` passes or every process still owing one has died; then the processes
    get ``join_s`` to end before they are killed."""
    collected: dict[int, tuple[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(collected) < len(processes) and time.monotonic() < deadline:
            try:
                rank, status, value = results.get(timeout=1)
            except queue.Empty:
                # every process still owing a result has died: nothing more will come
                if all(not p.is_alive() for i, p in enumerate(processes) if i not in collected):
                    break
                continue
            collected[rank] = (status, value)
    finally:
        for process in processes:
            process.join(join_s)
            if process.is_alive():
                process.kill()
                process.join(5)
    return collected


def run_job(output_dir: Path, *overrides: str) -> dict:
    """Run a full local job (real party processes) and return its summary.json."""
    from launch.cli import run

    settings = [f"output_dir={output_dir}", "run_id=test", "transport.connect_timeout_s=60",
                "transport.timeout_s=60", "launch.timeout_s=600", *overrides]
    assert run(settings) == 0
    return json.loads((output_dir / "test" / "summary.json").read_text())


def config_refusal(overrides: list[str]) -> str:
    """The one-line ConfigError that ``load_config(overrides)`` stops with (a test fails if none)."""
    import pytest

    from launch.config import ConfigError, load_config

    with pytest.raises(ConfigError) as error:
        load_config(overrides)
    return str(error.value)
