"""Local launches: one process per party on this machine (forked from a pre-imported server)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from multiprocessing.process import BaseProcess
from typing import Iterator

from launch.party_processes import core_share, party_context, start_party
from parties.config import RunConfig
from parties.dealer import process_names
from parties.entry import party_main
from parties.transport.keys import generate_party_keys

log = logging.getLogger("cotrain.launch")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LaunchError(RuntimeError):
    """A party failed or the job ran past its deadline."""


def _local_addresses(config: RunConfig, names: list[str], key_dir: str) -> RunConfig:
    """Loopback addresses on free ports; for zmq, every party's address and fresh keys."""
    transport = replace(config.transport, master_addr="127.0.0.1", master_port=free_port())
    if transport.name == "zmq":
        transport = replace(transport, peers={name: f"tcp://127.0.0.1:{free_port()}" for name in names})
        if transport.encrypt:  # fresh CurveZMQ key pairs for this run only
            generate_party_keys(key_dir, names)
            transport = replace(transport, key_dir=key_dir)
    return replace(config, transport=transport)


def launch_local(config: RunConfig) -> None:
    """Start every party, wait for all of them, stop the rest as soon as one fails."""
    names = list(process_names(config))
    with tempfile.TemporaryDirectory(prefix="cotrain-keys-") as key_dir:  # removed, keys and all, at the end
        _run_processes(_local_addresses(config, names, key_dir))


def _run_processes(config: RunConfig) -> None:
    context = party_context()
    names = process_names(config)  # the dealer too, where the suite has one
    # the parties share this host's cores; OMP_NUM_THREADS, where set, decides instead
    threads = None if "OMP_NUM_THREADS" in os.environ else core_share(len(names))
    processes: list[BaseProcess] = []
    try:
        with _stopped_by_signals():
            for rank, name in enumerate(names):
                processes.append(start_party(context, party_main, (config, rank), name, threads))
            _wait(processes, config.launch.timeout_s, config.launch.grace_s)
    finally:
        _stop(processes)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # Ctrl-C already unwinds through the stop


@contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """SIGTERM or SIGHUP to the launcher stop every party before it exits: by default they
    would end the launcher alone and leave its parties running."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def stop(number: int, _frame: object) -> None:
        raise LaunchError(f"the launcher received {signal.Signals(number).name}; all parties were stopped")

    previous = {number: signal.signal(number, stop) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _wait(processes: list[BaseProcess], timeout_s: float, grace_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while any(p.is_alive() for p in processes):
        failed = [p for p in processes if p.exitcode not in (None, 0)]
        if failed:
            _let_others_stop(processes, grace_s)
            raise LaunchError(f"{_describe(failed)}; the other parties were stopped")
        if time.monotonic() > deadline:
            raise LaunchError(f"the job ran past launch.timeout_s={timeout_s:g}; all parties were stopped")
        time.sleep(0.1)
    failed = [p for p in processes if p.exitcode != 0]
    if failed:
        raise LaunchError(_describe(failed))


def _describe(failed: list[BaseProcess]) -> str:
    """Which parties failed first, and how: an exit code, or the signal that killed them."""
    parts = []
    for process in failed:
        code = process.exitcode
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"failed (exit code {code})"
        parts.append(f"party {process.name} {how}")
    return ", ".join(parts)


def _let_others_stop(processes: list[BaseProcess], grace_s: float) -> None:
    deadline = time.monotonic() + grace_s
    while any(p.is_alive() for p in processes) and time.monotonic() < deadline:
        time.sleep(0.1)


def _stop(processes: list[BaseProcess]) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
