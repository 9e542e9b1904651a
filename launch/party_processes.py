"""Party processes forked from one pre-imported server, so torch and CrypTen load once per launcher.

Spawning re-imports torch, CrypTen and the engine in every party (seconds of CPU each, the
largest part of a small job on two cores). A forkserver imports them once, before any thread
or CUDA context exists, and forks each party from that clean state; forking the launcher
itself is never safe (it may hold CUDA or threads). A forked party takes the launcher's
current environment and standard streams, as a spawned one would, rather than the
forkserver's from the moment it started.

Parties forked here share this host's cores, so each computes on its share of them
(``core_share``): torch would otherwise give every party an OpenMP thread per core, and an
OpenMP worker spins for about 10 ms after each parallel operation before it sleeps (measured
on this 2-core machine), CPU taken from the other parties while they wait on each other.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import threading
from multiprocessing import reduction
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, Callable

# what every party process imports: the party entry point pulls in torch, CrypTen and the engine
PRELOAD = ["parties.entry"]


def core_share(processes: int) -> int:
    """Each of ``processes`` processes' share of the cores this process may run on (at least one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // processes)


def party_context() -> BaseContext:
    """The multiprocessing context that starts party processes."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


class LauncherState:
    """The launcher's environment and stdout/stderr, re-created in a party when it unpickles
    this (duplicated descriptors travel with the start request), and its pid: the party ends
    when the launcher does."""

    def __reduce__(self) -> tuple[Callable, tuple]:
        return _adopt, (os.getpid(), dict(os.environ), reduction.DupFd(1), reduction.DupFd(2))


def _adopt(launcher: int, environment: dict[str, str], stdout: Any, stderr: Any) -> None:
    _end_with_the_launcher(launcher)
    os.environ.clear()
    os.environ.update(environment)
    for target, inherited in ((1, stdout), (2, stderr)):
        descriptor = inherited.detach()
        os.dup2(descriptor, target)
        os.close(descriptor)


def _end_with_the_launcher(launcher: int) -> None:
    """A launcher killed outright (SIGKILL: no chance to stop its parties) must not leave them
    running. The forkserver outlives it (every party holds its liveness pipe), so each party
    watches the launcher itself and ends when it does (Linux 5.3+; elsewhere the launcher's own
    stop is all there is)."""
    try:
        launcher_handle = os.pidfd_open(launcher)
    except ProcessLookupError:  # gone before this party started
        os._exit(1)
    except (AttributeError, OSError):
        return

    def watch() -> None:
        select.select([launcher_handle], [], [])  # readable once the launcher has exited
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


def start_party(context: BaseContext, target: Callable[..., Any], args: tuple, name: str,
                threads: int | None = None) -> BaseProcess:
    """Start ``target(*args)`` in a party process that runs with the launcher's environment
    and streams as they are now, and with ``threads`` torch threads (None: torch's default)."""
    process = context.Process(target=_as_launcher, args=(LauncherState(), threads, target, *args), name=name,
                              daemon=False)
    process.start()
    return process


def _as_launcher(adopted: None, threads: int | None, target: Callable[..., Any], *args: Any) -> Any:
    # ``adopted``: the LauncherState, already applied while this process unpickled its arguments
    if threads is not None:
        import torch  # already loaded: the forkserver preloads it

        torch.set_num_threads(threads)
    return target(*args)
