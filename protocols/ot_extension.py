"""IKNP OT extension (semi-honest) between two parties, as correlated OTs, both directions at once.

* Each party is OT sender in one extension instance and receiver in the other; the 128 base
  OTs of each (``protocols.base_ot``) seed AES-CTR streams that stretch into bit columns.
* The columns are read as one 128-bit row per OT and hashed with a fixed-key AES
  correlation-robust hash (tweaked, with the orthomorphism sigma: ``protocols.ot_hash``), in
  blocks of OTs that stay in cache; compiled kernels turn each block's pads into corrections
  (sender) or results (receiver) and add them into their groups at once.
* A :class:`Cot` request asks for correlated OTs over Z_2^64 (the sender's two messages
  differ by its correlation) or GF(2), and for the results summed over groups of
  consecutive OTs, so a product over 64 bits comes back as one word, never as 64.
* Any number of requests runs in exchanges of bounded size (``CHUNK_WORDS``, ``CHUNK_OTS``); each exchange
  is two messages each way: the receiver's u columns, then the sender's corrections. Every
  message is an explicit header (exchange number and byte count, int64) and a raw buffer;
  a header that is not the one expected stops with :class:`OtError`.
"""

from __future__ import annotations

import dataclasses
import itertools
import secrets
from typing import Any, Callable, Generator, Sequence

import numba
import numpy as np
import torch

from protocols.base_ot import KAPPA, OtError, base_ot_receive, base_ot_send
from protocols.ot_hash import CrHash, sigma
from protocols.prg import CipherStream

# words (8 bytes) of correlations, and OTs, per exchange and direction: they bound memory (the
# corrections 64 MB each way, each of the u, t and q columns 64 MB) while keeping a training
# step's exchanges few: each one waits for the slower party, and under load a wait costs more
# than the work (a W6 step: about 2 exchanges, not 6 as at 2^21 words)
CHUNK_WORDS = 1 << 23
CHUNK_OTS = 1 << 22


def _padded(count: int) -> int:
    """OTs rounded up to whole 64-bit words per column."""
    return (count + 63) // 64 * 64


class _Columns:
    """128 keystream columns written into one reused buffer: contiguous (so u goes on the wire
    as it is) and never freshly allocated per exchange (fresh pages cost more than the AES).
    Rows are read in order: each read's 15 spare bytes are the next row's."""

    def __init__(self, streams: Sequence[CipherStream]) -> None:
        self.streams = streams
        self.buffer = np.empty(0, np.uint8)

    def start(self, width: int) -> np.ndarray:
        """The (128, width) uint8 view the next ``width`` bytes of each stream go into (by :meth:`read_row`)."""
        size = len(self.streams) * width
        if len(self.buffer) < size + 15:
            self.buffer = np.empty(size + 15, np.uint8)
        return self.buffer[:size].reshape(len(self.streams), width)

    def read_row(self, row: int, width: int, data: np.ndarray | None = None) -> None:
        """Stream ``row``'s next ``width`` bytes into its row, XOR-ed with ``data`` if given."""
        self.streams[row].read_into(self.buffer[row * width:], width, data)


# -- IKNP extension: one direction -----------------------------------------------------------------
class ExtensionSender:
    """Holds s and the base keys k_i^{s_i}; q_i = G(k_i^{s_i}) ^ (u_i & s_i) column by column."""

    def __init__(self, choices: np.ndarray, keys: Sequence[bytes]) -> None:
        bits = choices.astype(np.uint8)
        self.choices = bits
        self.s_sigma = sigma(np.packbits(bits, bitorder="little"))
        self.columns = _Columns([CipherStream(k) for k in keys])
        self.counter = 0

    def q_columns(self, u: np.ndarray, count: int) -> tuple[np.ndarray, int]:
        """q for ``count`` OTs from the peer's u ((128, w) uint8) as (128, w) uint64, and the number
        of its first OT. Column i is G(k_i^{s_i}) ^ (u_i & s_i): the cipher XORs u_i in as it
        writes the keystream where s_i = 1 (no pass over the columns of its own)."""
        first, self.counter = self.counter, self.counter + count
        width = _padded(count) // 8
        q = self.columns.start(width)
        for row, bit in enumerate(self.choices):
            self.columns.read_row(row, width, u[row] if bit else None)
        return q.view(np.uint64), first


class ExtensionReceiver:
    """Holds both base keys per column; makes u for its choice bits and the t columns."""

    def __init__(self, keys: Sequence[tuple[bytes, bytes]]) -> None:
        self.t_columns = _Columns([CipherStream(k0) for k0, _ in keys])
        self.u_columns = _Columns([CipherStream(k1) for _, k1 in keys])
        self.counter = 0

    def columns(self, choices: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """u = G(k0) ^ G(k1) ^ r ((128, w) uint8), t = G(k0) ((128, w) uint64), the first OT's number."""
        count = len(choices)
        width = _padded(count) // 8
        r = np.zeros(width, dtype=np.uint8)
        packed = np.packbits(choices, bitorder="little")
        r[: len(packed)] = packed
        t, u = self.t_columns.start(width), self.u_columns.start(width)
        masked = np.empty(width, np.uint8)
        for row in range(KAPPA):  # t_i ^ r while t_i is still in cache, then the cipher XORs G(k1) in
            self.t_columns.read_row(row, width)
            np.bitwise_xor(t[row], r, out=masked)
            self.u_columns.read_row(row, width, masked)
        first, self.counter = self.counter, self.counter + count
        return u, t.view(np.uint64), first


# -- requests --------------------------------------------------------------------------------------
# A Gilboa OT for bit i of a word carries x * 2^i: only the low 64 - i bits of x matter, so a
# ``scaled`` request's correction for OT j keeps the low 64 - j % 64 bits of each word, back to
# back (2,080 bits, 260 bytes, per 64 OTs, not 512).
_SCALED_BITS = 64 - np.arange(64, dtype=np.int64)
_SCALED_PREFIX = np.concatenate([[0], np.cumsum(_SCALED_BITS)])


def _scaled_bits_before(ot: int) -> int:
    """Correction bits of a scaled request's OTs 0..ot-1, per word."""
    return ot // 64 * int(_SCALED_PREFIX[64]) + int(_SCALED_PREFIX[ot % 64])


@dataclasses.dataclass
class Cot:
    """One correlated-OT request, the same shape on both parties.

    ``mine`` OTs where I choose (``choices(a, b)``: my bits for my OTs a..b-1) and ``theirs``
    where the peer chooses (``deltas(a, b)``: my (b - a, words) correlations for its OTs
    a..b-1). Results come back summed over each ``group`` of consecutive OTs (for ``binary``
    requests: bit ``i % group`` of a word, XOR-ed). In a ``scaled`` request (``group`` a
    multiple of 64) OT j's correlation counts 2^(j % 64) times: the sums are of 2^(j % 64)
    times each result, and only the bits that survive the shift travel; its 64 OTs j // 64
    share one correlation, so ``deltas(a, b)`` gives rows a // 64 .. (b - 1) // 64 only.
    """

    mine: int
    theirs: int
    words: int
    choices: Callable[[int, int], np.ndarray]
    deltas: Callable[[int, int], np.ndarray]
    group: int = 1
    binary: bool = False
    scaled: bool = False

    def tau_bits(self, a: int, b: int) -> int:
        """Bits of the corrections of this request's OTs a..b-1."""
        if self.binary:
            return (b - a) * self.words
        if self.scaled:
            return self.words * (_scaled_bits_before(b) - _scaled_bits_before(a))
        return (b - a) * self.words * 64

    def tau_bytes(self, a: int, b: int) -> int:
        """Bytes on the wire for the corrections of this request's OTs a..b-1 (a segment of an
        exchange starts at a whole byte)."""
        return (self.tau_bits(a, b) + 7) // 8


def chunk_bounds(counts: Sequence[int], words: Sequence[int], budget: int,
                  most: int) -> list[tuple[int, int]]:
    """Consecutive ranges of OTs (over all requests in turn) of at most ``budget`` words and
    ``most`` OTs each (a single OT wider than ``budget`` gets a range of its own)."""
    bounds, low, position, used = [], 0, 0, 0
    for count, width in zip(counts, words):
        while count:
            room = max(min((budget - used) // width, most - (position - low)), 0)
            if room == 0 and used == 0:
                room = 1
            if room == 0:
                bounds.append((low, position))
                low, used = position, 0
                continue
            take = min(count, room)
            position, count, used = position + take, count - take, used + take * width
    if position > low:
        bounds.append((low, position))
    return bounds


def _segments(counts: Sequence[int], low: int, high: int):
    """(request, first OT, end OT, offset in the range) for each request that overlaps low..high."""
    start = 0
    for index, count in enumerate(counts):
        a, b = max(low, start), min(high, start + count)
        if a < b:
            yield index, a - start, b - start, a - low
        start += count


# -- finishing a block of OTs: corrections out, results summed per group as they come ------------
# (an OT's group and place in it are counted along, not divided out: a division per OT costs more
# than the rest of its arithmetic). A pad is AES(input) ^ input (``CrHash.pads``), XOR-ed here as
# it is read. Corrections are written into and read from the messages' own buffers, as words.
_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


@numba.njit(nogil=True, cache=True)
def _send_words(encrypted: np.ndarray, inputs: np.ndarray, deltas: np.ndarray, out: np.ndarray, at: int,
                own: np.ndarray, first: int, group: int, scaled: bool) -> None:
    """tau = p1 - p0 - delta for OTs first.., each correction's kept bits back to back in the
    little-endian words of ``out`` (the outgoing message) from its bit ``at`` on (shifts into
    whole words, not a store per byte); my share -p0 added into row (first + r) // group of
    ``own``. Scaled: OT j counts 2^(j % 64), only the low 64 - j % 64 bits of its corrections
    travel, and ``deltas`` holds one row per 64 OTs (the row of OT first + r is
    (first + r) // 64 - first // 64)."""
    g, place, row = first // group, first % group, 0
    index, fill = at >> 6, at & 63  # fill: the bits of acc in use
    acc = out[index] & ((np.uint64(1) << np.uint64(fill)) - np.uint64(1))  # earlier pieces' bytes in this word
    for r in range(encrypted.shape[1]):
        bit = place % 64 if scaled else 0
        width = 64 - bit
        keep = _ALL_ONES >> np.uint64(64 - width)
        for w in range(own.shape[1]):
            p0 = encrypted[0, r, w] ^ inputs[0, r, w]
            correction = ((encrypted[1, r, w] ^ inputs[1, r, w]) - p0 - deltas[row, w]) & keep
            acc |= correction << np.uint64(fill)
            fill += width
            if fill >= 64:
                out[index] = acc
                index += 1
                fill -= 64
                acc = correction >> np.uint64(width - fill) if fill > 0 else np.uint64(0)
            own[g, w] -= p0 << np.uint64(bit)
        place += 1
        if not scaled or place % 64 == 0:
            row += 1
        if place == group:
            g, place = g + 1, 0
    if fill > 0:
        out[index] = acc


@numba.njit(nogil=True, cache=True)
def _receive_words(encrypted: np.ndarray, inputs: np.ndarray, choices: np.ndarray, message: np.ndarray, at: int,
                   received: np.ndarray, first: int, group: int, scaled: bool) -> None:
    """p_c = H(t) - c tau (tau read from the kept bits of the incoming ``message``'s words, from
    its bit ``at`` on; for a scaled request the bits above them would be shifted out), added into
    row (first + r) // group of ``received``."""
    g, place = first // group, first % group
    index, fill = at >> 6, at & 63  # fill: the bits of message[index] already read
    for r in range(choices.shape[0]):
        bit = place % 64 if scaled else 0
        width = 64 - bit
        keep = _ALL_ONES >> np.uint64(64 - width)
        chosen = (np.uint64(0) - np.uint64(choices[r])) & keep  # the kept bits where c = 1
        for w in range(received.shape[1]):
            tau = message[index] >> np.uint64(fill)
            if fill + width > 64:
                tau |= message[index + 1] << np.uint64(64 - fill)
            fill += width
            if fill >= 64:
                index += 1
                fill -= 64
            received[g, w] += ((encrypted[0, r, w] ^ inputs[0, r, w]) - (tau & chosen)) << np.uint64(bit)
        place += 1
        if place == group:
            g, place = g + 1, 0


@numba.njit(nogil=True, cache=True)
def _send_binary(encrypted: np.ndarray, inputs: np.ndarray, deltas: np.ndarray, tau_bits: np.ndarray,
                 own: np.ndarray, first: int, group: int) -> None:
    """One bit per OT: tau = p1 ^ p0 ^ delta; my share p0 XOR-ed into bit (first + r) % group of its group's word."""
    one = np.uint64(1)
    g, place = first // group, first % group
    for r in range(deltas.shape[0]):
        for w in range(deltas.shape[1]):
            p0 = (encrypted[0, r, w] ^ inputs[0, r, w]) & one
            p1 = (encrypted[1, r, w] ^ inputs[1, r, w]) & one
            tau_bits[r, w] = np.uint8(p0 ^ p1 ^ (deltas[r, w] & one))
            own[g, w] ^= p0 << np.uint64(place)
        place += 1
        if place == group:
            g, place = g + 1, 0


@numba.njit(nogil=True, cache=True)
def _receive_binary(encrypted: np.ndarray, inputs: np.ndarray, choices: np.ndarray, tau_bits: np.ndarray,
                    received: np.ndarray, first: int, group: int) -> None:
    """p_c = H(t) ^ c tau (one bit per OT), XOR-ed into bit (first + r) % group of its group's word."""
    one = np.uint64(1)
    g, place = first // group, first % group
    for r in range(tau_bits.shape[0]):
        chosen = np.uint64(choices[r] & 1)
        for w in range(tau_bits.shape[1]):
            pad = (encrypted[0, r, w] ^ inputs[0, r, w]) & one
            received[g, w] ^= (pad ^ (np.uint64(tau_bits[r, w]) & chosen)) << np.uint64(place)
        place += 1
        if place == group:
            g, place = g + 1, 0


def _delta_rows(request: "Cot", deltas: np.ndarray, a: int, low: int, high: int) -> np.ndarray:
    """The rows of a segment's ``deltas`` (starting at OT a) for its OTs a + low .. a + high - 1."""
    if not request.scaled:
        return deltas[low:high]
    return deltas[(a + low) // 64 - a // 64: (a + high - 1) // 64 - a // 64 + 1]


def _blocks(count: int, words: int, copies: int):
    """(start, end) of the blocks of OTs 0..count-1 hashed in one call."""
    step = CrHash.block_ots(words, copies)
    return ((low, min(low + step, count)) for low in range(0, count, step))


def _message_buffer(buffer: np.ndarray, nbytes: int) -> np.ndarray:
    """``buffer`` (uint64), or a larger one if it holds fewer than ``nbytes`` bytes and a spare word
    (buffers are reused across exchanges: fresh pages cost more than the work written into them;
    the spare word lets kernels read and write whole words past a message's last byte)."""
    return buffer if 8 * len(buffer) >= nbytes + 8 else np.empty(nbytes // 8 + 2, np.uint64)


def lockstep(*runs: Generator[None, None, Any]) -> list[Any]:
    """Run two-party protocols together; each pauses (yields) right after sending a message and
    reads the peer's when resumed. Every run's message of a round goes out before any run waits
    for the peer's, so the runs share one wait per round, not one each: a wait is where the
    faster party idles for the slower one. Both parties pass the same runs in the same order
    (their messages then arrive in the order they are read). Returns each run's value."""
    values: list[Any] = [None] * len(runs)
    active = list(range(len(runs)))
    while active:
        for index in list(active):
            try:
                next(runs[index])
            except StopIteration as done:
                values[index] = done.value
                active.remove(index)
    return values


class OtChannel:
    """Both extension directions between this party and its one peer, with traffic views."""

    def __init__(self, comm: Any, peer: int, record: bool = False) -> None:
        self.comm = comm
        self.peer = peer
        self.rank = comm.get_rank()
        self.record = record
        self.views: list[tuple[str, np.ndarray]] = []
        self.ots = 0
        self.exchanges = 0
        # the lower rank runs its base-OT sender first, so the blocking sends interleave
        s_choices = np.frombuffer(secrets.token_bytes(KAPPA), dtype=np.uint8) & 1
        if self.rank < peer:
            receiver_keys = base_ot_send(comm, peer)
            sender_keys = base_ot_receive(comm, peer, s_choices)
        else:
            sender_keys = base_ot_receive(comm, peer, s_choices)
            receiver_keys = base_ot_send(comm, peer)
        self.sender = ExtensionSender(s_choices, sender_keys)
        self.receiver = ExtensionReceiver(receiver_keys)
        self.hash = CrHash()
        self._corrections = np.empty(0, np.uint64)
        self._incoming: dict[str, np.ndarray] = {}

    def _outgoing(self, nbytes: int) -> np.ndarray:
        """The reused buffer (uint64 words) an exchange's corrections are written into: its first
        ``nbytes`` bytes are the message as it goes out."""
        self._corrections = _message_buffer(self._corrections, nbytes)
        return self._corrections

    def _post(self, outgoing: np.ndarray) -> list[Any]:
        """Send ``outgoing`` (uint8): a header (exchange number, byte count), then the bytes."""
        body = torch.from_numpy(np.ascontiguousarray(outgoing).reshape(-1).view(np.uint8))
        header = torch.tensor([self.exchanges, body.numel()], dtype=torch.int64)
        return [self.comm.isend(header, self.peer)] + ([self.comm.isend(body, self.peer)] if body.numel() else [])

    def _take(self, handles: list[Any], expected: int, what: str) -> np.ndarray:
        """The peer's message of ``expected`` bytes (then my sends ``handles`` are waited for): a
        header that is not this exchange's, or announces another length, is refused before any
        payload is read."""
        peer_header = torch.empty(2, dtype=torch.int64)
        self.comm.irecv(peer_header, self.peer).wait()
        exchange, size = (int(v) for v in peer_header)
        if exchange != self.exchanges or size != expected:
            raise OtError(f"OT peer party {self.peer} sent a malformed {what} message: exchange {exchange} of "
                          f"{size} bytes, expected exchange {self.exchanges} of {expected} bytes")
        self._incoming[what] = _message_buffer(self._incoming.get(what, np.empty(0, np.uint64)), expected)
        received = self._incoming[what].view(np.uint8)[:expected]  # valid until the next message of its kind
        if expected:
            self.comm.irecv(torch.from_numpy(received), self.peer).wait()
        for handle in handles:
            handle.wait()
        if self.record:
            self.views.append((what, received.copy()))
        return received

    def correlated_steps(self, requests: Sequence[Cot]) -> Generator[None, None, list[tuple[np.ndarray, np.ndarray]]]:
        """Every request's (received, own) group sums: as receiver, p0 + c * delta per OT; as
        sender -p0 (my additive share) or, if ``binary``, p0 (my XOR share). A protocol run for
        :func:`lockstep`: it pauses after sending each message."""
        mine, theirs = [r.mine for r in requests], [r.theirs for r in requests]
        words = [r.words for r in requests]
        received = [np.zeros(((r.mine + r.group - 1) // r.group, r.words), np.uint64) for r in requests]
        own = [np.zeros(((r.theirs + r.group - 1) // r.group, r.words), np.uint64) for r in requests]
        my_bounds = chunk_bounds(mine, words, CHUNK_WORDS, CHUNK_OTS)
        peer_bounds = chunk_bounds(theirs, words, CHUNK_WORDS, CHUNK_OTS)
        for my_range, peer_range in itertools.zip_longest(my_bounds, peer_bounds, fillvalue=(0, 0)):
            yield from self._exchange(requests, my_range, peer_range, received, own)
        self.ots += sum(mine) + sum(theirs)
        return list(zip(received, own))

    def _exchange(self, requests: Sequence[Cot], my_range: tuple[int, int], peer_range: tuple[int, int],
                  received: list[np.ndarray], own: list[np.ndarray]) -> Generator[None, None, None]:
        """One chunk: my OTs my_range as receiver, the peer's peer_range as sender."""
        mine, theirs = [r.mine for r in requests], [r.theirs for r in requests]
        my_segments = list(_segments(mine, *my_range))
        choices = np.concatenate([np.zeros(0, np.uint8)] + [requests[i].choices(a, b).astype(np.uint8)
                                                            for i, a, b, _ in my_segments])
        u, t, t_first = self.receiver.columns(choices)
        peer_count = peer_range[1] - peer_range[0]
        handles = self._post(u)
        yield
        peer_u = self._take(handles, KAPPA * _padded(peer_count) // 8, "u-columns").reshape(KAPPA, -1).view(np.uint64)
        q, q_first = self.sender.q_columns(peer_u.view(np.uint8), peer_count)
        peer_segments = list(_segments(theirs, *peer_range))
        total = sum(requests[i].tau_bytes(a, b) for i, a, b, _ in peer_segments)
        out_words = self._outgoing(total)
        outgoing, position = out_words.view(np.uint8)[:total], 0
        for i, a, b, offset in peer_segments:  # sender side
            request, count = requests[i], b - a
            deltas = request.deltas(a, b)
            tau = np.empty((count, request.words), np.uint8) if request.binary else None
            for low, high in _blocks(count, request.words, 2):
                encrypted, inputs = self.hash.pads(q, offset + low, high - low, q_first + offset + low,
                                                   request.words, self.sender.s_sigma)
                if request.binary:
                    _send_binary(encrypted, inputs, deltas[low:high], tau[low:high], own[i], a + low, request.group)
                else:
                    _send_words(encrypted, inputs, _delta_rows(request, deltas, a, low, high), out_words,
                                8 * position + request.tau_bits(a, a + low), own[i], a + low, request.group,
                                request.scaled)
            size = request.tau_bytes(a, b)
            if request.binary:
                outgoing[position: position + size] = np.packbits(tau.reshape(-1), bitorder="little")
            position += size
        expected = sum(requests[i].tau_bytes(a, b) for i, a, b, _ in my_segments)
        handles = self._post(outgoing)
        yield
        peer_taus, position = self._take(handles, expected, "corrections"), 0
        message = self._incoming["corrections"]  # peer_taus as words: the word kernels read it in place
        for i, a, b, offset in my_segments:  # receiver side
            request, count, size = requests[i], b - a, requests[i].tau_bytes(a, b)
            if request.binary:
                raw = peer_taus[position: position + size]
                tau = np.unpackbits(raw, bitorder="little")[: count * request.words].reshape(count, request.words)
            for low, high in _blocks(count, request.words, 1):
                encrypted, inputs = self.hash.pads(t, offset + low, high - low, t_first + offset + low, request.words)
                mine = choices[offset + low: offset + high]
                if request.binary:
                    _receive_binary(encrypted, inputs, mine, tau[low:high], received[i], a + low, request.group)
                else:
                    _receive_words(encrypted, inputs, mine, message, 8 * position + request.tau_bits(a, a + low),
                                   received[i], a + low, request.group, request.scaled)
            position += size
        self.exchanges += 1
