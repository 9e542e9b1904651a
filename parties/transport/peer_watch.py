"""Naming a dead peer where the wire cannot: gloo and MPI.

gloo reports a dead peer as an address (and only to the parties talking to it right then);
MPICH's mpirun kills every other rank with SIGKILL and names only a PID (without its
auto clean-up it signals them with SIGUSR1 instead, which Python takes as the end); torchrun
stops the survivors with SIGTERM. So each party learns its peers' process ids and hosts once (over
the transport itself, as an int64 tensor, nothing pickled) and a thread checks the peers on
its own host every ``CHECK_S``: when one is gone while this party waits on the wire, or when
a launcher's signal arrives, the party prints one line naming the dead party and the
operation in flight, and exits with status 1 without waiting for the blocked collective. Peers on other hosts are not watched
(ZeroMQ's heartbeats cover that case).

A party ending normally passes a closing barrier first and stops its watch, so a peer that
exits afterwards is no failure.
"""

from __future__ import annotations

import hashlib
import os
import select
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from parties.failure_line import print_failure
from parties.transport.base import TransportError

CHECK_S = 0.05
NAMING_WAIT_S = 1.0  # after a launcher's signal, how long to look for the peer whose death caused it
# how long a peer may be dead before a party waiting on the wire gives up: the wait may be on
# another peer, whose message completes a check the dead one found failed and left on
DEATH_GRACE_S = 2.0
# torchrun stops the survivors with SIGTERM; MPICH's mpirun tells them of a failed rank with SIGUSR1
LAUNCHER_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def _host_id() -> int:
    return int.from_bytes(hashlib.blake2b(socket.gethostname().encode(), digest_size=7).digest(), "big")


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its launcher, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def failing_on_transport_error() -> bool:
    """Whether the exception being handled is a transport failure (not, say, bad data)."""
    return isinstance(sys.exc_info()[1], TransportError)


class PeerWatch:
    """Watches the same-host peers of ``transport`` (which sets ``in_flight`` around each wait)."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        me = torch.tensor([os.getpid(), _host_id()], dtype=torch.int64)
        everyone = transport.all_gather(me)
        self._pids = {rank: int(entry[0]) for rank, entry in enumerate(everyone)
                      if rank != transport.get_rank() and int(entry[1]) == int(me[1])}
        self._stop = threading.Event()
        self._wakeup: socket.socket | None = None
        if threading.current_thread() is threading.main_thread():
            self._catch_signals()
        self._thread = threading.Thread(target=self._run, name="cotrain-peer-watch", daemon=True)
        self._thread.start()

    def _catch_signals(self) -> None:
        """A launcher's signal wakes the watch (the main thread may be blocked in C)."""
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        for number in LAUNCHER_SIGNALS:
            signal.signal(number, self._on_signal)
        self._wakeup, self._writer = reader, writer

    def _on_signal(self, number: int, _frame: Any) -> None:
        """The main thread's side: it gets here first whenever it is between calls into C, and
        must report before its next MPI call (MPICH aborts the job from inside one)."""
        self._report(self._dead_soon(), signal.Signals(number).name)

    def _dead_soon(self) -> list[int]:
        """The peers found dead now, or within NAMING_WAIT_S."""
        deadline = time.monotonic() + NAMING_WAIT_S
        while not (dead := self._dead()) and time.monotonic() < deadline:
            time.sleep(CHECK_S / 4)
        return dead

    def stop(self, after_transport_error: bool = False) -> None:
        """Stop watching; after a transport error, first name the peer behind it if its process
        is gone (a gloo error names only an address)."""
        if after_transport_error:
            if dead := self._dead_soon():
                self._stop.set()
                self._report(dead, terminated="")
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        if self._wakeup is not None and threading.current_thread() is threading.main_thread():
            signal.set_wakeup_fd(-1)
            for number in LAUNCHER_SIGNALS:
                signal.signal(number, signal.SIG_DFL)
            self._wakeup.close()
            self._writer.close()
            self._wakeup = None

    def _dead(self) -> list[int]:
        return [rank for rank, pid in self._pids.items() if not _alive(pid)]

    def _run(self) -> None:
        dead_since: float | None = None
        while not self._stop.is_set():
            terminated = ""
            if self._wakeup is not None:
                readable, _, _ = select.select([self._wakeup], [], [], CHECK_S)
                if readable:
                    received = self._wakeup.recv(64)
                    terminated = next((number.name for number in LAUNCHER_SIGNALS if number in received), "")
            else:
                time.sleep(CHECK_S)
            if self._stop.is_set():
                return
            dead = self._dead_soon() if terminated else self._dead()
            if dead and dead_since is None:
                dead_since = time.monotonic()
            # a dead peer matters once this party waits on the wire, DEATH_GRACE_S after the
            # death: until then it may still be finishing work that ends in its own report (a
            # failed check the peer also found, completed by another peer's message)
            waiting = dead and getattr(self._transport, "in_flight", None)
            if terminated or (waiting and time.monotonic() - dead_since >= DEATH_GRACE_S):
                self._report(dead, terminated)

    def _report(self, dead: list[int], terminated: str) -> None:
        transport = self._transport
        me = transport.peer(transport.get_rank())
        operation = getattr(transport, "in_flight", None) or "no operation"
        if dead:
            names = ", ".join(transport.peer(rank) for rank in dead)
            verb = "is" if len(dead) == 1 else "are"
            message = f"{me}: {names} {verb} gone (the process exited or was killed) while {operation} was in flight"
        else:
            message = f"{me}: stopped by the launcher ({terminated}) while {operation} was in flight"
        print_failure(transport.get_name(), "TransportError", message)
        sys.stdout.flush()
        os._exit(1)  # the main thread may be blocked in a collective that never returns
