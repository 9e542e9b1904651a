"""A ZeroMQ party's connections, watched from a thread of their own through socket monitors.

Two jobs:

* **Guard the listening ROUTER against strangers.** At most ``MAX_UNAUTHENTICATED``
  connections beyond one per peer may be open at once, and new ones are admitted at
  ``ACCEPT_RATE`` per second (bursts of ``ACCEPT_BURST``); a connection over either limit is
  shut down as soon as it is accepted.
  With ZMQ_MAXMSGSIZE (no frame over the transport's frame limit is read, handshake
  commands included) and ZMQ_HANDSHAKE_IVL (a handshake must finish in time), strangers can
  make the party hold at most ``MAX_UNAUTHENTICATED`` x (frame limit + ZeroMQ's 8 KiB read
  buffer). Refused and failed connections are counted and logged with the client's address,
  at most one line per second (with the number left out).
* **Notice peers going away**, by rank: each DEALER's DISCONNECTED event (the peer closed the
  connection, died, dropped a frame it could not authenticate, or stopped answering
  heartbeats), its failed handshakes, a peer that had to authenticate again mid-session
  (its connection to us dropped), and when a frame last failed CurveZMQ's authentication.
  The transport reads these whenever it waits.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import zmq
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger(__name__)

MAX_UNAUTHENTICATED = 8
ACCEPT_RATE = 8.0
ACCEPT_BURST = 16
# libzmq's reason for a frame that failed decryption (ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC)
CRYPTOGRAPHIC = 0x11000001
_POLL_MS = 100

_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
DEALER_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | _HANDSHAKE_FAILED
ROUTER_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | _HANDSHAKE_FAILED


def _client_address(fd: int) -> str:
    """``host:port`` of the client on an accepted connection's descriptor."""
    try:
        with socket.socket(fileno=os.dup(fd)) as view:
            host, port = view.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "an unknown address"


def _shut_down(fd: int) -> None:
    """End an accepted connection under ZeroMQ's feet: it sees end-of-stream and closes it."""
    try:
        with socket.socket(fileno=os.dup(fd)) as view:
            view.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already gone


class ThrottledLog:
    """Warnings about strangers: at most one line per second of each kind (a flood of one kind
    must not hide the other), counting what was left out."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(message, float("-inf")) < 1.0:
            self._left_out[message] = self._left_out.get(message, 0) + 1
            return
        left_out = self._left_out.pop(message, 0)
        suffix = f" ({left_out} similar lines left out)" if left_out else ""
        log.warning(message + suffix, *args)
        self._last[message] = now


class ConnectionWatch:
    """Reads the router's and every dealer's monitor; the transport reads what it found."""

    def __init__(self, context: zmq.Context, router: zmq.Socket, dealers: dict[int, zmq.Socket]) -> None:
        self._context = context
        prefix = f"inproc://cotrain-watch-{id(self):x}"
        self._addresses: dict[str, int | None] = {f"{prefix}-router": None}
        router.monitor(f"{prefix}-router", ROUTER_EVENTS)
        for rank, dealer in dealers.items():
            dealer.monitor(f"{prefix}-{rank}", DEALER_EVENTS)
            self._addresses[f"{prefix}-{rank}"] = rank
        self._sockets = [router, *dealers.values()]
        # what the transport reads (set here, read there: plain assignments under the GIL)
        self.lost: dict[int, float] = {}  # rank -> when its connection dropped
        self.handshake_failures: dict[int, str] = {}
        self.reauthenticated: dict[int, float] = {}
        self.last_cryptographic_failure = float("-inf")
        self.counts = {"accepted": 0, "dropped": 0, "failed": 0}
        self._established: set[int] = set()
        self._open: dict[int, str] = {}  # accepted connections still open: descriptor -> client address
        self._peers = len(dealers)
        self._session_started = False
        self.session_start = float("inf")
        self._tokens, self._refilled = float(ACCEPT_BURST), time.monotonic()
        self._throttled = ThrottledLog()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cotrain-zmq-watch", daemon=True)

    def start(self) -> None:
        """Start watching; call before the sockets bind or connect, so no event is missed."""
        self._thread.start()
        self._ready.wait()

    def session_started(self) -> None:
        """From now on a peer authenticating again means its connection dropped mid-session."""
        self._session_started = True
        self.session_start = time.monotonic()

    def authenticated(self, rank: int) -> None:
        """Called by the ZAP handler for every accepted CurveZMQ handshake."""
        if self._session_started:
            self.reauthenticated.setdefault(rank, time.monotonic())

    def stop(self) -> None:
        # stop the monitors while the thread still drains their pipes: libzmq's stop event
        # blocks on a full pipe whose reader has gone, and close() would then hang
        for sock in self._sockets:
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
        if self.counts["dropped"] or self.counts["failed"]:
            log.warning("connections: %d accepted, %d dropped over the limits, %d failed the handshake",
                        self.counts["accepted"], self.counts["dropped"], self.counts["failed"])

    # -- the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        poller = zmq.Poller()
        monitors = {}
        for address, rank in self._addresses.items():
            monitor = self._context.socket(zmq.PAIR)
            monitor.connect(address)
            poller.register(monitor, zmq.POLLIN)
            monitors[monitor] = rank
        self._ready.set()
        try:
            while not self._stop.is_set():
                for monitor, _ in poller.poll(_POLL_MS):
                    event = recv_monitor_message(monitor)
                    rank = monitors[monitor]
                    if rank is None:
                        self._router_event(event["event"], event["value"])
                    else:
                        self._dealer_event(rank, event["event"])
        finally:
            for monitor in monitors:
                monitor.close(linger=0)

    def _dealer_event(self, rank: int, event: int) -> None:
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._established.add(rank)
        elif event == zmq.EVENT_DISCONNECTED:
            if rank in self._established:
                self.lost.setdefault(rank, time.monotonic())
        elif self._session_started:
            return  # a failed reconnection: the lost connection is what counts
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self.handshake_failures.setdefault(rank, "refused our CurveZMQ key")
        elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            self.handshake_failures.setdefault(
                rank, "failed the CurveZMQ handshake (its key does not match the one listed)")

    def _router_event(self, event: int, value: int) -> None:
        # ACCEPTED and DISCONNECTED carry the connection's descriptor; a failed handshake
        # carries only its reason (and a success nothing), so the limit counts every open
        # connection beyond one per peer
        if event == zmq.EVENT_ACCEPTED:
            self._admit(value)
        elif event == zmq.EVENT_DISCONNECTED:
            self._open.pop(value, None)
        elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == CRYPTOGRAPHIC:
            self.last_cryptographic_failure = time.monotonic()
            log.error("dropped a connection whose frame failed CurveZMQ's authentication check")
        elif event & _HANDSHAKE_FAILED:
            self.counts["failed"] += 1
            self._throttled.warning("a connection failed the handshake (ZeroMQ reason %#x)", value)

    def _admit(self, fd: int) -> None:
        self.counts["accepted"] += 1
        now = time.monotonic()
        self._tokens = min(float(ACCEPT_BURST), self._tokens + (now - self._refilled) * ACCEPT_RATE)
        self._refilled = now
        address = _client_address(fd)
        strangers = len(self._open) - self._peers
        if strangers >= MAX_UNAUTHENTICATED or self._tokens < 1:
            self.counts["dropped"] += 1
            reason = (f"{strangers} connections beyond one per party already open"
                      if strangers >= MAX_UNAUTHENTICATED else f"more than {ACCEPT_RATE:g} new connections per second")
            self._throttled.warning("dropped a connection from %s before its handshake: %s", address, reason)
            _shut_down(fd)
            return
        self._tokens -= 1
        self._open[fd] = address
