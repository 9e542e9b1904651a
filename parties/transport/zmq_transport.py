"""ZeroMQ transport: a ROUTER each party binds, a DEALER to every peer, CurveZMQ by default.

Every ZeroMQ message is one frame of at most ``FRAME_LIMIT`` bytes, and ZeroMQ itself
refuses to read a bigger one (ZMQ_MAXMSGSIZE), during the CurveZMQ handshake too, so no
connection can make a party buffer more than that before it is authenticated (see
``zmq_watch`` for the limits on how many may try at once). A tensor message is one frame of
``PREFIX`` (magic, header length, payload size), the binary ``tensor_header`` and, for a
small payload, the payload itself; a larger one follows in chunks of ``CHUNK_BYTES``, which
the receiver reassembles into a buffer of the announced size (at most
``transport.max_message_bytes``), allocated only once the header has arrived on an
authenticated connection.

No call blocks on a full queue: a peer's outgoing queue holds ``QUEUE_MESSAGES`` frames
(ZMQ_SNDHWM), chunks that do not fit wait in the sender's outbox, and every wait
(for a message, or for a send to be handed over) keeps pushing outboxes and taking in
arrivals, so two parties sending each other large messages always make progress whatever
the queue sizes. Messages that arrive before they are asked for wait in a stash bounded
per peer (``STASH_MESSAGES`` messages, ``STASH_MESSAGE_SIZES`` x max_message_bytes bytes).
The incoming queue (ZMQ_RCVHWM, :func:`receive_queue_frames`) holds as many frames as that
stash may: ZeroMQ answers heartbeats in its IO thread only while it reads a connection, and
it stops reading one whose queue is full, so with a short queue a party computing for longer
than ``heartbeat_timeout_s`` while a peer's large message waited for it lost that connection.

Every DEALER carries its party's rank as routing identity; with CurveZMQ the ZAP handler
maps each accepted public key to a rank too, so a message is accepted only when the key,
the identity and the header agree. Heartbeats (ZMQ_HEARTBEAT_*) and the socket monitors
find a peer that died or went silent within seconds; a party that ends normally says
``bye`` first, so any other disconnection is a failure, reported naming the peer and the
operation in flight.
"""

from __future__ import annotations

import collections
import logging
import struct
import sys
import time
from typing import Any, Callable

import numpy as np
import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from parties.transport import tensor_header
from parties.transport.base import PartyAddress, TransportError, TransportOptions
from parties.transport.keys import KeyFileError, fingerprint, load_key_pair, load_public_key
from parties.transport.p2p import DONE, ZERO_COPY_BYTES, PointToPointTransport, Waitable, add_words, flat_bytes
from parties.transport.wire import WireError
from parties.transport.zmq_watch import ConnectionWatch

log = logging.getLogger(__name__)

# magic, header length, payload size: a payload under INLINE_BYTES ends the frame, a larger
# one follows in chunks
PREFIX = struct.Struct("<BIQ")
MAGIC = 0xC7
INLINE_BYTES = ZERO_COPY_BYTES
CHUNK_BYTES = 256 << 10
FRAME_LIMIT = CHUNK_BYTES + 4096  # the largest frame ZeroMQ reads from anyone (room for CurveZMQ's box)
# Frames queued per peer for sending. Any value works (no call blocks on a full queue, see
# above); 16 x 256 KiB keeps a 1 Gbit/s link busy for tens of milliseconds.
QUEUE_MESSAGES = 16
STASH_MESSAGES = 4096
STASH_MESSAGE_SIZES = 2
DISCONNECT_GRACE_S = 1.0  # after a peer's connection drops, how long its last messages get to arrive
_SLICE_S = 0.25
_SETTLE_S = 1.0  # waits check the watch at least this often
GOODBYE_LINGER_S = 5.0


def receive_queue_frames(max_message_bytes: int) -> int:
    """Frames ZeroMQ may queue from one peer: what the early-message stash may hold, so that
    only a peer past the stash's limit (refused when read) is ever left unread."""
    return STASH_MESSAGES + STASH_MESSAGE_SIZES * -(-max_message_bytes // CHUNK_BYTES)


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


class PartyAuthenticator(ThreadAuthenticator):
    """ZAP handler accepting exactly the listed parties' keys; the User-Id is the rank."""

    def __init__(self, context: zmq.Context, ranks_by_key: dict[bytes, int]) -> None:
        super().__init__(context, log=logging.getLogger(f"{__name__}.zap"))
        self._ranks_by_key = ranks_by_key
        self.watch: ConnectionWatch | None = None

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self._ranks_by_key:
            if self.watch is not None:
                self.watch.authenticated(self._ranks_by_key[key])
            return True
        log.warning("refused a CurveZMQ connection: public key %s belongs to no party", fingerprint(key))
        return False

    def curve_user_id(self, client_public_key: bytes) -> str:
        return str(self._ranks_by_key[z85.encode(client_public_key)])


class _Assembly:
    """A chunked payload arriving into a buffer of the size its header announced."""

    def __init__(self, header: bytes, op: str, seq: int, size: int, header_bytes: int) -> None:
        self.header, self.op, self.seq, self.size, self.wire_bytes = header, op, seq, size, header_bytes
        self.buffer = np.empty(size, dtype=np.uint8)
        self.filled = 0
        self.addend: np.ndarray | None = None  # summing: our own words, added to each chunk

    def sum_with(self, addend: np.ndarray) -> bool:
        """Add ``addend``'s int64 words to what came already and to every chunk from now on
        (an all-reduce's sum done while the rest is on its way); False where the sizes do
        not allow it (the caller then adds after the whole payload came)."""
        if addend.nbytes != self.size or self.filled % 8:
            return False
        words = self.buffer[:self.filled].view(np.int64)
        words += addend[:self.filled].view(np.int64)
        self.addend = addend
        return True

    def add(self, chunk: memoryview, sender: str) -> bool:
        """Copy (or, summing, add) in one chunk; True once the payload is complete."""
        end = self.filled + len(chunk)
        if end > self.size:
            raise WireError(f"{sender} sent {end - self.size} bytes more than the {self.size} it announced "
                            f"for {self.op!r} (message {self.seq})")
        if self.addend is None:
            self.buffer[self.filled:end] = np.frombuffer(chunk, dtype=np.uint8)
        elif len(chunk) % 8:
            raise WireError(f"{sender} sent a chunk of {len(chunk)} bytes, not whole words, into a sum "
                            f"({self.op!r}, message {self.seq})")
        else:
            np.add(np.frombuffer(chunk, dtype=np.int64), self.addend[self.filled:end].view(np.int64),
                   out=self.buffer[self.filled:end].view(np.int64))
        self.filled = end
        self.wire_bytes += len(chunk)
        return end == self.size


class _Send:
    """A send: done once every frame of the message has been handed to ZeroMQ (copied)."""

    def __init__(self, transport: "ZmqTransport", dst: int, op: str, frames_up_to: int) -> None:
        self._transport, self._dst, self._op, self._frames_up_to = transport, dst, op, frames_up_to

    def wait(self) -> None:
        self._transport._flush(self._dst, self._frames_up_to, self._op)

    def is_completed(self) -> bool:
        self._transport._push(self._dst)
        return self._transport._handed[self._dst] >= self._frames_up_to


class ZmqTransport(PointToPointTransport):
    """Transport over ZeroMQ; encrypted and authenticated with CurveZMQ unless disabled."""

    def __init__(self, address: PartyAddress, options: TransportOptions) -> None:
        super().__init__(address, options)
        self._context = zmq.Context(io_threads=1)
        self._auth: PartyAuthenticator | None = None
        self._watch: ConnectionWatch | None = None
        self._closed = False
        self._broken = False  # a peer failed or misbehaved: close without draining
        self._dealers: dict[int, zmq.Socket] = {}
        self._identities = {str(rank).encode(): rank for rank in self._others()}
        self._wait_ms = -1  # the ROUTER's receive timeout as last set
        size = self.world_size
        self._outbox: list[collections.deque] = [collections.deque() for _ in range(size)]
        self._queued, self._handed = [0] * size, [0] * size  # frames per peer, ever
        self._arrived = [0] * size  # next sequence number due from each peer
        self._last_arrival = [0.0] * size
        self._partial: list[_Assembly | None] = [None] * size
        self._stash: list[dict[int, tuple[bytes, int, memoryview]]] = [{} for _ in range(size)]
        self._stash_bytes = [0] * size
        self._bye: dict[int, int] = {}  # peer -> the sequence number of its goodbye
        self._sums: dict[int, tuple[int, np.ndarray]] = {}  # peer -> (message awaited, words to add)
        self._summed: set[tuple[int, int]] = set()  # (peer, message) payloads already summed
        try:
            endpoints = party_endpoints(address, options)
            keys = self._keys() if options.encrypt else None
            if keys is None:
                log.warning(
                    "!!! transport.encrypt=false: traffic between parties is NEITHER ENCRYPTED NOR "
                    "AUTHENTICATED; anyone who can reach %s can read and inject shares !!!",
                    endpoints[self.rank],
                )
            self._router = self._router_socket(keys)
            for rank in self._others():
                self._dealers[rank] = self._dealer_socket(rank, keys)
            self._watch = ConnectionWatch(self._context, self._router, self._dealers)
            if self._auth is not None:
                self._auth.watch = self._watch
            self._watch.start()
            self._bind(endpoints[self.rank])
            for rank in self._others():
                self._dealers[rank].connect(endpoints[rank])
            self._handshake(options.connect_timeout_s)
            self._watch.session_started()
        except BaseException:
            self._shutdown(linger_s=0)  # nothing queued is worth waiting for
            raise

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
        self._auth = PartyAuthenticator(self._context, {key.encode(): rank for rank, key in peers.items()})
        self._auth.start()
        self._auth.configure_curve_callback("*", self._auth)
        return {"public": public, "secret": secret, "peers": peers}

    def _limit(self, sock: zmq.Socket) -> None:
        """Frame size, queue lengths and heartbeats, the same on every socket."""
        sock.setsockopt(zmq.MAXMSGSIZE, FRAME_LIMIT)
        sock.setsockopt(zmq.SNDHWM, QUEUE_MESSAGES)
        sock.setsockopt(zmq.RCVHWM, receive_queue_frames(self.options.max_message_bytes))
        sock.setsockopt(zmq.HEARTBEAT_IVL, max(1, int(self.options.heartbeat_s * 1000)))
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(1, int(self.options.heartbeat_timeout_s * 1000)))
        sock.setsockopt(zmq.HEARTBEAT_TTL, max(100, int(self.options.heartbeat_timeout_s * 1000)))

    def _router_socket(self, keys: dict[str, Any] | None) -> zmq.Socket:
        router = self._context.socket(zmq.ROUTER)
        self._limit(router)
        # a stranger's handshake must finish in time, or its connection (and memory) is released
        router.setsockopt(zmq.HANDSHAKE_IVL, int(min(self.options.connect_timeout_s, 10.0) * 1000))
        router.setsockopt(zmq.LINGER, 0)
        if keys:
            router.curve_server = True
            router.curve_publickey = keys["public"].encode()
            router.curve_secretkey = keys["secret"].encode()
        return router

    def _bind(self, endpoint: str) -> None:
        try:
            self._router.bind(endpoint)
        except zmq.ZMQError as error:
            raise TransportError(f"{self.peer(self.rank)} cannot listen on {endpoint}: {error}") from None

    def _dealer_socket(self, rank: int, keys: dict[str, Any] | None) -> zmq.Socket:
        dealer = self._context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.ROUTING_ID, str(self.rank).encode())
        self._limit(dealer)
        # ZeroMQ retries the connection itself, doubling the wait up to one second
        dealer.setsockopt(zmq.RECONNECT_IVL, max(1, int(self.options.connect_retry_s * 1000)))
        dealer.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if keys:
            dealer.curve_serverkey = keys["peers"][rank].encode()
            dealer.curve_publickey = keys["public"].encode()
            dealer.curve_secretkey = keys["secret"].encode()
        return dealer

    # -- sending ----------------------------------------------------------------------------
    def _send_frame(self, dst: int, header: bytes, buffer: np.ndarray) -> Waitable:
        stats = self.stats
        if buffer.nbytes < INLINE_BYTES:
            # small: the bytes ride behind the header, one frame
            frame = b"".join((PREFIX.pack(MAGIC, len(header), buffer.nbytes), header, buffer.tobytes()))
            stats.bytes_sent += len(frame)
            if not self._outbox[dst]:  # the common case: straight into ZeroMQ's queue
                try:
                    self._dealers[dst].send(frame, zmq.NOBLOCK)
                    self._queued[dst] += 1
                    self._handed[dst] += 1
                    return DONE
                except zmq.Again:
                    pass
            frames = [frame]
        else:
            flat = memoryview(flat_bytes(buffer))
            head = PREFIX.pack(MAGIC, len(header), flat.nbytes) + header
            frames = [head, *(flat[start:start + CHUNK_BYTES] for start in range(0, flat.nbytes, CHUNK_BYTES))]
            stats.bytes_sent += len(head) + flat.nbytes
        self._outbox[dst].extend(frames)
        self._queued[dst] += len(frames)
        self._push(dst)
        op = tensor_header.op_name(tensor_header.FIXED.unpack_from(header)[0])
        return _Send(self, dst, op, self._queued[dst])

    def _push(self, dst: int) -> None:
        """Hand ``dst``'s waiting frames to ZeroMQ (which copies them) until its queue is full."""
        outbox, dealer = self._outbox[dst], self._dealers[dst]
        while outbox:
            try:
                dealer.send(outbox[0], zmq.NOBLOCK)
            except zmq.Again:
                return
            outbox.popleft()
            self._handed[dst] += 1

    def _flush(self, dst: int, frames_up_to: int, op: str) -> None:
        """Wait until ``dst``'s frames up to ``frames_up_to`` are with ZeroMQ."""
        deadline = time.monotonic() + self.options.timeout_s
        try:
            while self._handed[dst] < frames_up_to:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TransportError(
                        f"{self.peer(self.rank)}: {op} to {self.peer(dst)} was not taken within "
                        f"transport.timeout_s={self.options.timeout_s:g}")
                self._pump(min(remaining, _SLICE_S), lambda: f"{op} to {self.peer(dst)}")
        except (TransportError, WireError):
            self._broken = True
            raise

    # -- receiving --------------------------------------------------------------------------
    def _recv_frame(self, src: int, op: str, seq: int, timeout_s: float) -> tuple[bytes, memoryview]:
        stash = self._stash[src]
        if seq not in stash:
            self._await(src, op, seq, timeout_s)
        header, wire_bytes, payload = stash.pop(seq)
        self._stash_bytes[src] -= len(payload)
        # counted when taken, not on arrival, so a stats reset splits traffic where the caller did
        self.stats.bytes_received += wire_bytes
        return header, payload

    def _await(self, src: int, op: str, seq: int, timeout_s: float) -> None:
        """Take in arrivals until ``src``'s message ``seq`` is in the stash."""
        stash = self._stash[src]
        deadline = time.monotonic() + timeout_s
        try:
            while seq not in stash:
                if src in self._bye and seq >= self._bye[src]:
                    raise TransportError(f"{self.peer(self.rank)}: {self.peer(src)} ended its session "
                                         f"before sending {op} (message {seq})")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TransportError(
                        f"{self.peer(self.rank)}: no message from {self.peer(src)} within "
                        f"{timeout_s:g} s while {op} (message {seq}) was in flight; "
                        "that party stalled or never connected")
                self._pump(min(remaining, _SLICE_S), lambda: f"{op} (message {seq} from {self.peer(src)})")
        except (TransportError, WireError):
            self._broken = True
            raise

    def _recv_summed(self, src: int, op: str, seq: int, addend: np.ndarray,
                     timeout_s: float) -> tuple[bytes, memoryview]:
        """The payload plus ``addend``, added chunk by chunk as they arrive (a chunk that came
        before this call at once): the sum is done by the time the last chunk is in."""
        self._sums[src] = (seq, addend)
        partial = self._partial[src]
        if partial is not None and partial.seq == seq and partial.sum_with(addend):
            self._summed.add((src, seq))
        try:
            header, payload = self._recv_frame(src, op, seq, timeout_s)
        finally:
            self._sums.pop(src, None)
        if (src, seq) in self._summed:
            self._summed.discard((src, seq))
            return header, payload
        return header, add_words(payload, addend)  # it had come whole before we asked

    def _pump(self, timeout_s: float, in_flight: Callable[[], str]) -> None:
        """One turn of the wait: take in what arrives, push what waits, check on the peers
        (``in_flight`` says what is awaited, for the errors: made only if one is raised)."""
        busy = [dst for dst in self._others() if self._outbox[dst]]
        if not busy:
            frames = self._next_message(timeout_s)
            if frames is not None:
                self._accept(frames)
        else:
            poller = zmq.Poller()
            poller.register(self._router, zmq.POLLIN)
            for dst in busy:
                poller.register(self._dealers[dst], zmq.POLLOUT)
            ready = dict(poller.poll(max(1, int(timeout_s * 1000))))
            for dst in busy:
                if self._dealers[dst] in ready:
                    self._push(dst)
            if self._router in ready:
                self._drain()
        self._check_peers(in_flight)

    def _next_message(self, timeout_s: float) -> list[zmq.Frame] | None:
        """The next message at our ROUTER, or None after ``timeout_s``."""
        wait_ms = max(1, int(timeout_s * 1000))
        if wait_ms != self._wait_ms:  # usually unchanged; skipping the call saves microseconds
            self._router.setsockopt(zmq.RCVTIMEO, wait_ms)
            self._wait_ms = wait_ms
        try:
            return self._router.recv_multipart(copy=False)
        except zmq.Again:
            return None

    def _drain(self) -> None:
        """Take in every message already waiting at the ROUTER."""
        while True:
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._accept(frames)

    def _check_peers(self, describe: Callable[[], str]) -> None:
        """Raise if a peer failed a handshake, dropped a frame, or went away without its goodbye."""
        watch = self._watch
        if not (watch.handshake_failures or watch.reauthenticated or watch.lost):
            return  # the common case, every turn of every wait
        in_flight = describe()
        me = self.peer(self.rank)
        if watch.handshake_failures:
            rank, reason = next(iter(watch.handshake_failures.items()))
            raise TransportError(f"{me}: {self.peer(rank)} {reason}")
        for rank, when in list(watch.reauthenticated.items()):
            if time.monotonic() - when < _SETTLE_S:
                continue  # the monitor's report of why the connection dropped may still be on its way
            if watch.last_cryptographic_failure > watch.session_start:
                raise WireError(f"{me}: a frame from {self.peer(rank)} failed CurveZMQ's authentication check "
                                f"(altered in flight), so its connection was dropped while {in_flight} "
                                "was in flight")
            raise TransportError(f"{me}: {self.peer(rank)}'s connection dropped and came back while "
                                 f"{in_flight} was in flight; messages may have been lost")
        for rank, since in list(watch.lost.items()):
            if rank in self._bye or time.monotonic() - max(since, self._last_arrival[rank]) < DISCONNECT_GRACE_S:
                continue
            self._drain()  # its goodbye may be waiting behind a long computation of ours
            if rank in self._bye or time.monotonic() - max(since, self._last_arrival[rank]) < DISCONNECT_GRACE_S:
                continue
            raise TransportError(
                f"{me}: {self.peer(rank)} went away without ending its session (it died, failed, or "
                f"stopped answering heartbeats for {self.options.heartbeat_timeout_s:g} s) while {in_flight} "
                "was in flight")

    def _accept(self, frames: list[zmq.Frame]) -> None:
        """File an arrived frame under its sender: a header, or the next chunk of a payload."""
        src = self._identities.get(frames[0].bytes)
        if src is None:
            log.warning("dropped a message from an unknown connection (identity %r)", frames[0].bytes[:16])
            return
        if len(frames) != 2:
            raise WireError(f"{self.peer(src)} sent {len(frames) - 1} frames; every message is one frame")
        frame = frames[1]
        if self.options.encrypt and frame.get("User-Id") != str(src):
            raise WireError(f"a connection authenticated as party {frame.get('User-Id')} "
                            f"claimed to be {self.peer(src)}")
        self._last_arrival[src] = time.monotonic()
        assembly = self._partial[src]
        if assembly is not None:
            if assembly.add(frame.buffer, self.peer(src)):
                self._partial[src] = None
                self._file(src, assembly.seq, assembly.header, assembly.wire_bytes, memoryview(assembly.buffer))
            return
        if src in self._bye:
            raise WireError(f"{self.peer(src)} sent a message after its goodbye")
        data = frame.bytes
        op, seq, end, size = self._read_prefix(data, src)
        expected = self._arrived[src]
        if seq != expected:
            raise WireError(f"{self.peer(src)} sent message number {seq}; expected {expected}")
        self._arrived[src] = expected + 1
        if op == tensor_header.BYE:
            self._bye[src] = expected
            return
        header = data[PREFIX.size:end]
        if size < INLINE_BYTES and len(data) == end + size:
            self._file(src, seq, header, len(data), memoryview(data)[end:])
        elif INLINE_BYTES <= size <= self.options.max_message_bytes and len(data) == end:
            self._check_stash(src, size)
            assembly = self._partial[src] = _Assembly(header, tensor_header.op_name(op), seq, size, len(data))
            awaited = self._sums.get(src)
            if awaited is not None and awaited[0] == expected and assembly.sum_with(awaited[1]):
                self._summed.add((src, expected))
        else:
            raise WireError(f"{self.peer(src)} sent a message of {len(data) - end} payload bytes announcing {size}: "
                            f"neither a small inline payload (under {INLINE_BYTES} bytes) nor an announced size "
                            f"of {INLINE_BYTES}..{self.options.max_message_bytes} bytes")

    def _read_prefix(self, data: bytes, src: int) -> tuple[int, int, int, int]:
        """A message's op code, sequence number, where its header ends and its payload size;
        the rest of the header is checked by whoever takes the message."""
        if len(data) < PREFIX.size + tensor_header.FIXED.size:
            raise WireError(f"{self.peer(src)} sent a malformed header: a frame of {len(data)} bytes")
        magic, header_bytes, size = PREFIX.unpack_from(data)
        end = PREFIX.size + header_bytes
        if magic != MAGIC or header_bytes < tensor_header.FIXED.size or end > len(data):
            raise WireError(f"{self.peer(src)} sent a malformed header: magic {magic:#x}, "
                            f"{header_bytes} header bytes in a frame of {len(data)}")
        op, _, seq, _ = tensor_header.FIXED.unpack_from(data, PREFIX.size)
        return op, seq, end, size

    def _check_stash(self, src: int, incoming: int) -> None:
        """A peer may run ahead of what we asked for, but only so far."""
        count = len(self._stash[src]) + 1
        held = self._stash_bytes[src] + incoming
        limit = STASH_MESSAGE_SIZES * self.options.max_message_bytes
        if count > STASH_MESSAGES or held > limit:
            raise WireError(
                f"{self.peer(src)} sent {count} messages ({held} bytes) that no operation has asked for yet; "
                f"the limit is {STASH_MESSAGES} messages and {limit} bytes")

    def _file(self, src: int, seq: int, header: bytes, wire_bytes: int, payload: memoryview) -> None:
        if len(payload) < INLINE_BYTES:
            self._check_stash(src, len(payload))
        # a reassembled payload is ours alone: its (writable) memory may become a tensor
        self._stash[src][seq] = (header, wire_bytes, payload)
        self._stash_bytes[src] += len(payload)

    # -- shutdown ---------------------------------------------------------------------------
    def close(self) -> None:
        """Exchange goodbyes with every peer (waiting up to timeout_s), then release everything.

        A party closing because of an error says no goodbye, so its peers report it at once;
        nothing queued is worth waiting for then.
        """
        if self._closed:
            return
        failing = self._broken or sys.exc_info()[1] is not None
        if not failing:
            try:
                self._say_goodbye()
            except (TransportError, WireError) as error:
                log.warning("closing after the session ended: %s", error)
                failing = True
        # after the goodbyes only ours may still be on its way: a peer waits for it
        self._shutdown(linger_s=0 if failing else min(self.options.timeout_s, GOODBYE_LINGER_S))

    def _say_goodbye(self) -> None:
        """Send every peer our goodbye and wait for theirs, so no goodbye is left undelivered
        to a party that already left (and the last to close does not linger for nothing)."""
        for dst in self._others():
            header = tensor_header.encode("bye", self._take_seq(self._send_seq, dst), self.rank, [])
            self._outbox[dst].append(PREFIX.pack(MAGIC, len(header), 0) + header)
            self._queued[dst] += 1
            self._push(dst)
        for dst in self._others():
            self._flush(dst, self._queued[dst], "bye")
        deadline = time.monotonic() + self.options.timeout_s
        while waiting := [src for src in self._others() if src not in self._bye]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TransportError(f"{', '.join(self.peer(src) for src in waiting)} did not end the session "
                                     f"within transport.timeout_s={self.options.timeout_s:g}")
            self._pump(min(remaining, _SLICE_S), lambda: "the goodbye")

    def _shutdown(self, linger_s: float) -> None:
        if self._closed:
            return
        self._closed = True
        if self._watch is not None:
            self._watch.stop()
        for dealer in self._dealers.values():
            dealer.close(linger=int(linger_s * 1000))
        if hasattr(self, "_router"):
            self._router.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self._context.term()
