"""ZeroMQ transport: a ROUTER each party binds, a DEALER to every peer, CurveZMQ by default.

A message is a msgpack header frame and a raw payload frame. Large payloads leave zero-copy
(ZeroMQ reads the tensor's memory; the send handle waits until it has) and arrive zero-copy
(the received frame becomes the tensor); a small payload rides inside the header instead,
because one frame costs less than two. Every DEALER carries its party's rank as routing
identity; with CurveZMQ the ZAP handler maps each accepted public key to a rank too, so a
message is accepted only when the key, the identity and the header agree.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgpack
import numpy as np
import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from parties.transport.base import PartyAddress, TransportError, TransportOptions
from parties.transport.keys import KeyFileError, fingerprint, load_key_pair, load_public_key
from parties.transport.p2p import DONE, ZERO_COPY_BYTES, PointToPointTransport, Waitable, flat_bytes
from parties.transport.wire import WireError

log = logging.getLogger(__name__)

INLINE = "data"  # header key carrying a small payload
MAX_HEADER_BYTES = ZERO_COPY_BYTES + (1 << 16)
_HANDSHAKE_FAILURES = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def party_endpoints(address: PartyAddress, options: TransportOptions) -> list[str]:
    """Each party's ``tcp://host:port``: from ``peers`` by name, else master_port + rank."""
    names = [_name(address, rank) for rank in range(address.world_size)]
    if not options.peers:
        return [f"tcp://{options.master_addr}:{options.master_port + rank}" for rank in range(len(names))]
    missing = [name for name in names if name not in options.peers]
    if missing:
        raise TransportError(f"transport.peers has no address for {', '.join(missing)}")
    return [options.peers[name] for name in names]


def _name(address: PartyAddress, rank: int) -> str:
    return address.names[rank] if rank < len(address.names) else str(rank)


class _PartyAuthenticator(ThreadAuthenticator):
    """ZAP handler accepting exactly the listed parties' keys; the User-Id is the rank."""

    def __init__(self, context: zmq.Context, ranks_by_key: dict[bytes, int]) -> None:
        super().__init__(context, log=logging.getLogger(f"{__name__}.zap"))
        self._ranks_by_key = ranks_by_key

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self._ranks_by_key:
            return True
        log.warning("refused a CurveZMQ connection: public key %s belongs to no party", fingerprint(key))
        return False

    def curve_user_id(self, client_public_key: bytes) -> str:
        return str(self._ranks_by_key[z85.encode(client_public_key)])


class _TrackedSend:
    """A zero-copy send: done once ZeroMQ has released the tensor's memory."""

    def __init__(self, tracker: zmq.MessageTracker, transport: "ZmqTransport", dst: int, op: str) -> None:
        self._tracker, self._transport, self._dst, self._op = tracker, transport, dst, op

    def wait(self) -> None:
        try:
            self._tracker.wait(self._transport.options.timeout_s)
        except zmq.NotDone:
            self._transport._broken = True
            raise TransportError(
                f"{self._transport.peer(self._transport.rank)}: {self._op} to "
                f"{self._transport.peer(self._dst)} was not taken within "
                f"transport.timeout_s={self._transport.options.timeout_s:g}"
            ) from None

    def is_completed(self) -> bool:
        return self._tracker.done


class ZmqTransport(PointToPointTransport):
    """Transport over ZeroMQ; encrypted and authenticated with CurveZMQ unless disabled."""

    def __init__(self, address: PartyAddress, options: TransportOptions) -> None:
        super().__init__(address, options)
        self._context = zmq.Context(io_threads=1)
        self._auth: _PartyAuthenticator | None = None
        self._closed = False
        self._broken = False  # a peer failed or misbehaved: close without draining
        self._dealers: dict[int, zmq.Socket] = {}
        self._monitors: dict[zmq.Socket, int] = {}
        self._identities = {str(rank).encode(): rank for rank in self._others()}
        self._wait_ms = -1  # the ROUTER's receive timeout as last set
        self._arrived = [0] * self.world_size  # next sequence number due from each peer
        self._stash: list[dict[int, tuple[Any, int, memoryview]]] = [{} for _ in range(self.world_size)]
        try:
            endpoints = party_endpoints(address, options)
            keys = self._keys() if options.encrypt else None
            if keys is None:
                log.warning(
                    "!!! transport.encrypt=false: traffic between parties is NEITHER ENCRYPTED NOR "
                    "AUTHENTICATED; anyone who can reach %s can read and inject shares !!!",
                    endpoints[self.rank],
                )
            self._router = self._bind(endpoints[self.rank], keys)
            for rank in self._others():
                self._dealers[rank] = self._connect(rank, endpoints[rank], keys)
            self._handshake(options.connect_timeout_s)
        except BaseException:
            self._shutdown(linger_s=0)  # nothing queued is worth waiting for
            raise
        self._stop_monitors()

    # -- setup ------------------------------------------------------------------------------
    def _keys(self) -> dict[str, Any]:
        """Own key pair and every party's public key (from public_keys, else key_dir)."""
        options = self.options
        if not options.key_dir:
            raise TransportError(
                "transport.encrypt=true needs transport.key_dir with this party's key files "
                "(parties.transport.keys.generate_party_keys writes a set for a local run)"
            )
        try:
            public, secret = load_key_pair(options.key_dir, _name(self.address, self.rank))
            peers = {
                rank: options.public_keys.get(_name(self.address, rank))
                or load_public_key(options.key_dir, _name(self.address, rank))
                for rank in self._others()
            }
        except KeyFileError as error:
            raise TransportError(f"{self.peer(self.rank)}: {error}") from None
        for rank, key in peers.items():
            log.info("expecting %s with CurveZMQ key %s", self.peer(rank), fingerprint(key))
        self._auth = _PartyAuthenticator(self._context, {key.encode(): rank for rank, key in peers.items()})
        self._auth.start()
        self._auth.configure_curve_callback("*", self._auth)
        return {"public": public, "secret": secret, "peers": peers}

    def _bind(self, endpoint: str, keys: dict[str, Any] | None) -> zmq.Socket:
        router = self._context.socket(zmq.ROUTER)
        router.setsockopt(zmq.MAXMSGSIZE, self.options.max_message_bytes)  # zmq refuses bigger frames unread
        router.setsockopt(zmq.RCVHWM, 0)  # lockstep protocols bound the backlog; a limit could deadlock
        router.setsockopt(zmq.LINGER, 0)
        if keys:
            router.curve_server = True
            router.curve_publickey = keys["public"].encode()
            router.curve_secretkey = keys["secret"].encode()
        try:
            router.bind(endpoint)
        except zmq.ZMQError as error:
            router.close(linger=0)
            raise TransportError(f"{self.peer(self.rank)} cannot listen on {endpoint}: {error}") from None
        return router

    def _connect(self, rank: int, endpoint: str, keys: dict[str, Any] | None) -> zmq.Socket:
        dealer = self._context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.ROUTING_ID, str(self.rank).encode())
        dealer.setsockopt(zmq.SNDHWM, 0)
        dealer.setsockopt(zmq.SNDTIMEO, int(self.options.timeout_s * 1000))
        # ZeroMQ retries the connection itself, doubling the wait up to one second
        dealer.setsockopt(zmq.RECONNECT_IVL, max(1, int(self.options.connect_retry_s * 1000)))
        dealer.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if keys:
            dealer.curve_serverkey = keys["peers"][rank].encode()
            dealer.curve_publickey = keys["public"].encode()
            dealer.curve_secretkey = keys["secret"].encode()
            self._monitors[dealer.get_monitor_socket(_HANDSHAKE_FAILURES)] = rank
        dealer.connect(endpoint)
        return dealer

    # -- frames -----------------------------------------------------------------------------
    def _send_frame(self, dst: int, header: dict, buffer: np.ndarray) -> Waitable:
        dealer = self._dealers[dst]
        try:
            if buffer.nbytes < ZERO_COPY_BYTES:
                # small: the bytes ride inside the header, one frame, no tracking
                header[INLINE] = buffer.tobytes()
                head = msgpack.packb(header, use_bin_type=True)
                dealer.send(head)
                self.stats.add(sent=len(head), rounds=0)
                return DONE
            head = msgpack.packb(header, use_bin_type=True)
            dealer.send(head, zmq.SNDMORE)
            buffer = flat_bytes(buffer)
            tracker = dealer.send(buffer, copy=False, track=True)
        except zmq.Again:
            self._broken = True
            raise TransportError(
                f"{self.peer(self.rank)}: {header['op']} to {self.peer(dst)} could not be queued "
                f"within transport.timeout_s={self.options.timeout_s:g}"
            ) from None
        self.stats.add(sent=len(head) + buffer.nbytes, rounds=0)
        return _TrackedSend(tracker, self, dst, header["op"])

    def _recv_frame(self, src: int, expect: dict, timeout_s: float) -> tuple[Any, memoryview]:
        stash = self._stash[src]
        seq = expect["seq"]
        deadline = time.monotonic() + timeout_s
        while seq not in stash:
            remaining = deadline - time.monotonic()
            frames = self._next_message(remaining) if remaining > 0 else None
            if frames is None:
                self._broken = True
                raise TransportError(
                    f"{self.peer(self.rank)}: no message from {self.peer(src)} within "
                    f"{timeout_s:g} s while {expect['op']} (message {seq}) was in flight; "
                    "that party died, stalled or never connected"
                )
            try:
                self._accept(frames)
            except WireError:
                self._broken = True
                raise
        header, wire_bytes, payload = stash.pop(seq)
        # counted when taken, not on arrival, so a stats reset splits traffic where the caller did
        self.stats.add(received=wire_bytes, rounds=0)
        return header, payload

    def _next_message(self, timeout_s: float) -> list[zmq.Frame] | None:
        """The next message at our ROUTER, or None after ``timeout_s``."""
        if self._monitors:
            return self._next_message_watching_handshakes(timeout_s)
        wait_ms = max(1, int(timeout_s * 1000))
        if wait_ms != self._wait_ms:  # usually unchanged; skipping the call saves microseconds
            self._router.setsockopt(zmq.RCVTIMEO, wait_ms)
            self._wait_ms = wait_ms
        try:
            return self._router.recv_multipart(copy=False)
        except zmq.Again:
            return None

    def _next_message_watching_handshakes(self, timeout_s: float) -> list[zmq.Frame] | None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        for monitor in self._monitors:
            poller.register(monitor, zmq.POLLIN)
        ready = dict(poller.poll(max(1, int(timeout_s * 1000))))
        for monitor, rank in self._monitors.items():
            if monitor in ready:
                event = recv_monitor_message(monitor)
                reason = "refused our CurveZMQ key" if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH \
                    else "failed the CurveZMQ handshake (its key does not match the one listed)"
                raise TransportError(f"{self.peer(self.rank)}: {self.peer(rank)} {reason}")
        return self._router.recv_multipart(copy=False) if self._router in ready else None

    def _accept(self, frames: list[zmq.Frame]) -> None:
        """File an arrived message under its sender and number, checking both first."""
        src = self._identities.get(frames[0].bytes)
        if src is None:
            log.warning("dropped a message from an unknown connection (identity %r)", frames[0].bytes[:16])
            return
        count = len(frames)
        if count not in (2, 3):
            raise WireError(f"{self.peer(src)} sent {count - 1} frames; a message is a header and maybe a payload")
        if self.options.encrypt and frames[1].get("User-Id") != str(src):
            raise WireError(f"a connection authenticated as party {frames[1].get('User-Id')} "
                            f"claimed to be {self.peer(src)}")
        header = self._decode_header(frames[1].bytes, src)
        expected = self._arrived[src]
        if header.get("seq") != expected:
            raise WireError(f"{self.peer(src)} sent message number {header.get('seq')!r}; expected {expected}")
        inline = header.pop(INLINE, None)
        if count == 2 and (type(inline) is not bytes or len(inline) >= ZERO_COPY_BYTES):
            raise WireError(f"{self.peer(src)} sent a one-frame message without a small inline payload")
        if count == 3 and inline is not None:
            raise WireError(f"{self.peer(src)} sent a payload both inline and as a frame")
        # a payload frame is ours alone: its (writable) memory may become a tensor
        payload = memoryview(inline) if count == 2 else frames[2].buffer
        wire_bytes = len(frames[1]) + (len(frames[2]) if count == 3 else 0)
        self._arrived[src] = expected + 1
        self._stash[src][expected] = (header, wire_bytes, payload)

    def _decode_header(self, data: bytes, src: int) -> dict:
        if len(data) > MAX_HEADER_BYTES:
            raise WireError(f"{self.peer(src)} sent a header of {len(data)} bytes")
        try:
            header = msgpack.unpackb(data, raw=False)
        except (msgpack.UnpackException, ValueError, TypeError) as error:
            raise WireError(f"{self.peer(src)} sent a malformed header: {error.__class__.__name__}") from None
        if type(header) is not dict:
            raise WireError(f"{self.peer(src)} sent a malformed header: not a map")
        return header

    def _stop_monitors(self) -> None:
        """Handshake failures matter only while connecting."""
        for dealer in self._dealers.values():
            if self._monitors:
                dealer.disable_monitor()
        for monitor in self._monitors:
            monitor.close(linger=0)
        self._monitors.clear()

    # -- shutdown ---------------------------------------------------------------------------
    def close(self) -> None:
        """Send what is queued (waiting up to timeout_s for slow peers), then release everything.

        After a failure nothing queued is worth waiting for: the session is over.
        """
        self._shutdown(linger_s=0 if self._broken else self.options.timeout_s)

    def _shutdown(self, linger_s: float) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_monitors()
        for dealer in self._dealers.values():
            dealer.close(linger=int(linger_s * 1000))
        if hasattr(self, "_router"):
            self._router.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self._context.term()
