"""Local launches: one spawned process per party on this machine."""

from __future__ import annotations

import logging
import multiprocessing
import socket
import time
from dataclasses import replace
from multiprocessing.process import BaseProcess

from parties.config import RunConfig
from parties.entry import party_main

log = logging.getLogger("cotrain.launch")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LaunchError(RuntimeError):
    """A party failed or the job ran past its deadline."""


def launch_local(config: RunConfig) -> None:
    """Start every party, wait for all of them, stop the rest as soon as one fails."""
    config = replace(config, transport=replace(config.transport, master_addr="127.0.0.1", master_port=free_port()))
    context = multiprocessing.get_context("spawn")  # never fork: CUDA may be initialised
    processes = [context.Process(target=party_main, args=(config, rank), name=spec.name, daemon=False)
                 for rank, spec in enumerate(config.parties)]
    for process in processes:
        process.start()
    try:
        _wait(processes, config.launch.timeout_s, config.launch.grace_s)
    finally:
        _stop(processes)


def _wait(processes: list[BaseProcess], timeout_s: float, grace_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while any(p.is_alive() for p in processes):
        failed = [p for p in processes if p.exitcode not in (None, 0)]
        if failed:
            _let_others_stop(processes, grace_s)
            names = ", ".join(f"{p.name} (exit code {p.exitcode})" for p in failed)
            raise LaunchError(f"party {names} failed; the other parties were stopped")
        if time.monotonic() > deadline:
            raise LaunchError(f"the job ran past launch.timeout_s={timeout_s:g}; all parties were stopped")
        time.sleep(0.1)
    failed = [p for p in processes if p.exitcode != 0]
    if failed:
        names = ", ".join(f"{p.name} (exit code {p.exitcode})" for p in failed)
        raise LaunchError(f"party {names} failed")


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
