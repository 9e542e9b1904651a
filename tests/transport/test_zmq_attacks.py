"""Attacks on a ZeroMQ party and faults between parties: each bounded, or named within seconds.

Bounds under test (parties/transport/zmq_transport.py, zmq_watch.py): no frame over
FRAME_LIMIT (260 KiB) is read from anyone, at most MAX_UNAUTHENTICATED (8) connections may be
unauthenticated at once, a peer's unasked-for messages are capped; a dead, silent or
tampering peer is named within heartbeat_timeout_s + DISCONNECT_GRACE_S, far below timeout_s.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from dataclasses import replace

import pytest
import torch

from bench.memory_attack import curve_flood, idle_session, memory_kib
from helpers import address, free_ports, run_parties, values, zmq_options
from parties.transport import TransportError, TransportOptions, WireError, open_transport
from parties.transport.keys import generate_party_keys
from parties.transport.zmq_transport import FRAME_LIMIT, STASH_MESSAGES
from parties.transport.zmq_watch import MAX_UNAUTHENTICATED, ThrottledLog

SLOW_TIMEOUT_S = 60.0  # the operation timeout in these tests: every fault must be named long before


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = tmp_path_factory.mktemp("keys")
    generate_party_keys(directory, ["p0", "p1", "p2"])
    return str(directory)


@pytest.mark.slow
def test_strangers_cannot_make_a_party_allocate(tmp_path, capfd) -> None:
    """Before the frame limit, three such clients took a party from 223 MiB to 1.4 GiB."""
    ports = free_ports(2)
    processes, stop = idle_session(str(tmp_path), ports)
    try:
        victim = processes[0].pid
        before = memory_kib(victim)["VmRSS"]
        # a 2 GiB frame announced in the handshake: refused unread
        huge = curve_flood("127.0.0.1", ports[0], 3, 64 << 20)
        # frames just under the limit, from many clients at once: only a few are let in
        many = curve_flood("127.0.0.1", ports[0], 100, 1 << 20, announced=FRAME_LIMIT - 64)
        growth_kib = memory_kib(victim)["VmHWM"] - before
    finally:
        stop.set()
        for process in processes:
            process.join(30)
    assert all(sent < 8 << 20 for sent in huge), huge  # what the kernel buffered before the refusal
    bound_kib = MAX_UNAUTHENTICATED * (FRAME_LIMIT + 8192) // 1024
    # the bound, plus room for the allocator's and Python's own bookkeeping (log lines, dicts)
    assert growth_kib < bound_kib + 8 * 1024, (growth_kib, bound_kib, sum(many))
    err = capfd.readouterr().err
    assert "dropped a connection from 127.0.0.1:" in err and "before its handshake" in err, err[-2000:]
    assert [p.exitcode for p in processes] == [0, 0], err[-3000:]  # the session itself was not disturbed


def test_a_flood_of_one_warning_does_not_hide_another(caplog: pytest.LogCaptureFixture) -> None:
    """One line per second of each kind: failed handshakes first (the 2 GiB frames above) must
    not silence the drops that follow within the second (the strangers test missed them so)."""
    throttled = ThrottledLog()
    with caplog.at_level("WARNING", logger="parties.transport.zmq_watch"):
        for _ in range(3):
            throttled.warning("a connection failed the handshake (ZeroMQ reason %#x)", 1)
        for port in range(5):
            throttled.warning("dropped a connection from %s before its handshake: %s", f"127.0.0.1:{port}", "full")
    lines = [record.getMessage() for record in caplog.records]
    assert lines == ["a connection failed the handshake (ZeroMQ reason 0x1)",
                     "dropped a connection from 127.0.0.1:0 before its handshake: full"]
    throttled._last = {message: when - 1.0 for message, when in throttled._last.items()}  # a second later
    with caplog.at_level("WARNING", logger="parties.transport.zmq_watch"):
        throttled.warning("dropped a connection from %s before its handshake: %s", "127.0.0.1:9", "full")
    assert caplog.records[-1].getMessage() == ("dropped a connection from 127.0.0.1:9 before its handshake: full "
                                               "(4 similar lines left out)")


# -- a bit flipped in flight -------------------------------------------------------------------
class _BitFlipProxy:
    """Forwards TCP connections to ``port``; flips one bit at byte ``at`` of the first client's stream."""

    def __init__(self, port: int, at: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._target, self._at, self._flipped = port, at, False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self._target))
            except OSError:  # the party is not listening yet: its peer will retry
                client.close()
                continue
            threading.Thread(target=self._forward, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._forward, args=(server, client, False), daemon=True).start()

    def _forward(self, source: socket.socket, sink: socket.socket, flip: bool) -> None:
        seen = 0
        try:
            while data := source.recv(1 << 16):
                if flip and not self._flipped and seen <= self._at < seen + len(data):
                    data = bytearray(data)
                    data[self._at - seen] ^= 0x10
                    self._flipped = True
                seen += len(data)
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _outcome(action) -> tuple[str, str, float]:
    start = time.perf_counter()
    try:
        action()
        return "completed", "", time.perf_counter() - start
    except (TransportError, WireError) as error:
        return type(error).__name__, str(error), time.perf_counter() - start


def _corrupted(rank: int, options: list[TransportOptions]) -> tuple[str, str, float]:
    t = open_transport(address(rank, 2), options[rank])
    t.barrier()
    if rank == 1:  # 2 MiB to party 0 through the proxy, then wait for an answer that never comes
        result = _outcome(lambda: (t.send(torch.ones(1 << 18, dtype=torch.int64), 0), t.recv(torch.empty(1), 0)))
    else:
        result = _outcome(lambda: t.recv(torch.empty(1 << 18, dtype=torch.int64), 1))
    t.close()
    return result


def test_a_bit_flipped_in_flight_is_named_at_once(key_dir: str) -> None:
    # the proxy keeps the sender's side open after the receiver drops its own, so the sender
    # learns of the drop from its heartbeats: naming takes up to heartbeat_timeout_s
    options = zmq_options(2, key_dir, timeout_s=SLOW_TIMEOUT_S, heartbeat_timeout_s=5.0)
    proxy = _BitFlipProxy(int(options.peers["p0"].rsplit(":", 1)[1]), at=1 << 20)
    through_proxy = replace(options, peers={**options.peers, "p0": f"tcp://127.0.0.1:{proxy.port}"})
    try:
        receiver, sender = values(run_parties(_corrupted, 2, [options, through_proxy], timeout_s=150), 2)
    finally:
        proxy.listener.close()
    kind, message, seconds = receiver
    assert kind == "WireError" and "party 1 (p1)" in message and "altered in flight" in message, receiver
    assert seconds < 10, receiver
    kind, message, seconds = sender
    assert kind == "TransportError" and "party 0 (p0)" in message and seconds < 10, sender


# -- a peer that dies or goes silent -------------------------------------------------------------
def _loses_party_2(rank: int, options: TransportOptions, how: str) -> tuple[str, str, float] | None:
    t = open_transport(address(rank, 3), options)
    pids = t.all_gather(torch.tensor([os.getpid()]))
    if rank == 2:
        time.sleep(1)  # its last messages reach the others first
        os.kill(os.getpid(), signal.SIGSTOP if how == "stop" else signal.SIGKILL)
    # party 0 waits on party 1, which waits on party 2: party 0 must still name party 2
    result = _outcome(lambda: t.recv(torch.empty(1), rank + 1))
    if rank == 0 and how == "stop":
        os.kill(int(pids[2]), signal.SIGKILL)
    t.close()
    return result


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_a_dead_or_silent_peer_is_named_within_seconds(key_dir: str, how: str) -> None:
    options = zmq_options(3, key_dir, timeout_s=SLOW_TIMEOUT_S, heartbeat_timeout_s=2.0)
    results = run_parties(_loses_party_2, 3, options, how, timeout_s=150)
    for rank, operation in ((0, "from party 1 (p1)"), (1, "from party 2 (p2)")):
        ok, (kind, message, seconds) = results[rank]
        assert ok and kind == "TransportError", results[rank]
        assert "party 2 (p2) went away" in message and operation in message, message
        assert seconds < 2.0 + 6, (rank, seconds)  # heartbeat timeout + grace + a loaded machine's slack
    if how == "stop":
        assert "stopped answering heartbeats for 2 s" in results[1][1][1]


# -- a busy party is not a silent one -------------------------------------------------------------
def _busy_while_a_large_message_waits(rank: int, options: TransportOptions, busy_s: float) -> tuple[str, str, float]:
    t = open_transport(address(rank, 2), options)
    t.barrier()
    payload = 40 << 20  # 160 chunks: far more than ZeroMQ's outgoing queue holds
    if rank == 0:
        result = _outcome(lambda: (t.send(torch.ones(payload // 8, dtype=torch.int64), 1), t.recv(torch.empty(1), 1)))
    else:
        time.sleep(busy_s)  # computing, not reading the transport
        result = _outcome(lambda: (t.recv(torch.empty(payload // 8, dtype=torch.int64), 0), t.send(torch.ones(1), 0)))
    t.close()
    return result


@pytest.mark.slow
def test_a_party_busy_past_the_heartbeat_timeout_keeps_its_connections(key_dir: str) -> None:
    """ZeroMQ answers heartbeats only while it reads a connection; it stopped reading one whose
    incoming queue (then 16 frames) was full, so this run lost its connection after 1 s."""
    options = zmq_options(2, key_dir, timeout_s=SLOW_TIMEOUT_S, heartbeat_s=0.2, heartbeat_timeout_s=1.0)
    for kind, message, _ in values(run_parties(_busy_while_a_large_message_waits, 2, options, 3.0, timeout_s=150), 2):
        assert kind == "completed", message


# -- a peer running far ahead --------------------------------------------------------------------
def _floods(rank: int, options: TransportOptions) -> tuple[str, str, float] | None:
    t = open_transport(address(rank, 2), options)
    result = None
    if rank == 1:
        for _ in range(STASH_MESSAGES + 1):
            t.isend(torch.zeros(1), 0)
    else:  # asks for a message far ahead, so everything before it waits in the stash
        result = _outcome(lambda: t._recv_frame(1, "p2p", STASH_MESSAGES + 10, 30))
    t.close()
    return result


def test_the_early_message_stash_is_bounded(key_dir: str) -> None:
    results = values(run_parties(_floods, 2, zmq_options(2, key_dir), timeout_s=150), 2)
    kind, message, _ = results[0]
    assert kind == "WireError" and "party 1 (p1)" in message and f"{STASH_MESSAGES} messages" in message, message


# -- a normal end is no failure ------------------------------------------------------------------
def _ends_early(rank: int, options: TransportOptions) -> tuple[str, str, float] | None:
    t = open_transport(address(rank, 2), options)
    t.barrier()
    if rank == 1:
        t.close()
        return None
    result = _outcome(lambda: t.recv(torch.empty(1), 1))
    t.close()
    return result


def test_a_peer_that_ended_its_session_is_reported_not_waited_for(key_dir: str) -> None:
    results = values(run_parties(_ends_early, 2, zmq_options(2, key_dir, timeout_s=SLOW_TIMEOUT_S), timeout_s=150), 2)
    kind, message, seconds = results[0]
    assert kind == "TransportError" and "party 1 (p1) ended its session before sending p2p" in message, message
    assert seconds < 10
