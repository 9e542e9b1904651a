"""IKNP OT extension (semi-honest) between two parties, as correlated OTs, both directions at once.

* Each party is OT sender in one extension instance and receiver in the other; the 128 base
  OTs of each (``protocols.base_ot``) seed AES-CTR streams that stretch into bit columns.
* The columns are transposed into one 128-bit row per OT (``protocols.bitmatrix``) and hashed
  with a fixed-key AES correlation-robust hash (tweaked, with the orthomorphism sigma).
* A :class:`Cot` request asks for correlated OTs over Z_2^64 (the sender's two messages
  differ by its correlation) or GF(2), and for the results summed over groups of
  consecutive OTs, so a product over 64 bits comes back as one word, never as 64.
* Any number of requests runs in exchanges of bounded size (``CHUNK_WORDS``); each exchange
  is two messages each way: the receiver's u columns, then the sender's corrections. Every
  message is an explicit header (exchange number and byte count, int64) and a raw buffer;
  a header that is not the one expected stops with :class:`OtError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import secrets
from typing import Any, Callable, Sequence

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from protocols.base_ot import KAPPA, OtError, base_ot_receive, base_ot_send
from protocols.bitmatrix import transpose_bits
from protocols.prg import CipherStream

# words (8 bytes) of correlations per exchange and direction: bounds memory (each working
# array stays near 16 MB) while keeping the round trips of a large batch few
CHUNK_WORDS = 1 << 21
_HASH_KEY = hashlib.sha256(b"cotrain-ot-fixed-key").digest()[:16]
_ONE = np.uint64(1)


# -- the correlation-robust hash ----------------------------------------------------------------
def _sigma(rows: np.ndarray) -> np.ndarray:
    """The orthomorphism sigma(x_L, x_R) = (x_L ^ x_R, x_L) on (m, 16) uint8 rows, as (m, 2) uint64."""
    halves = rows.view(np.uint64).reshape(-1, 2)
    out = np.empty_like(halves)
    np.bitwise_xor(halves[:, 0], halves[:, 1], out=out[:, 0])
    out[:, 1] = halves[:, 0]
    return out


def _hash_sigma(sigmas: np.ndarray, index: np.ndarray, words: int) -> np.ndarray:
    """pi(s ^ t) ^ s ^ t for each sigma row s (shape (..., m, 2)) and tweak t = (j, block),
    ``words`` uint64 per row; one AES-ECB call for everything."""
    blocks = (words + 1) // 2
    tweaked = np.empty(sigmas.shape[:-1] + (blocks, 2), dtype=np.uint64)
    tweaked[:] = sigmas[..., None, :]
    tweaked[..., 0] ^= index.astype(np.uint64)[:, None]
    tweaked[..., 1] ^= np.arange(1, blocks + 1, dtype=np.uint64)
    out = np.empty(tweaked.nbytes + 15, dtype=np.uint8)  # update_into wants block_size-1 spare bytes
    Cipher(algorithms.AES(_HASH_KEY), modes.ECB()).encryptor().update_into(tweaked.reshape(-1).view(np.uint8), out)
    hashed = out[: tweaked.nbytes].view(np.uint64).reshape(tweaked.shape)
    hashed ^= tweaked
    return hashed.reshape(sigmas.shape[:-1] + (2 * blocks,))[..., :words]


def hash_rows(rows: np.ndarray, index: np.ndarray, words: int) -> np.ndarray:
    """H(j, x_j) as ``words`` uint64 per row of ``rows`` ((m, 16) uint8; ``index`` the OT numbers)."""
    return _hash_sigma(_sigma(rows), index, words)


def _padded(count: int) -> int:
    """OTs rounded up to whole 64-bit words per column."""
    return (count + 63) // 64 * 64


def _read_columns(streams: Sequence[CipherStream], width: int) -> np.ndarray:
    """``width`` keystream bytes of each stream, one row each (written in place, no copy)."""
    columns = np.empty((len(streams), width + 16), dtype=np.uint8)
    for row, stream in zip(columns, streams):
        stream.read_into(row, width)
    return columns[:, :width]


# -- IKNP extension: one direction -----------------------------------------------------------------
class ExtensionSender:
    """Holds s and the base keys k_i^{s_i}; turns the receiver's u into q rows."""

    def __init__(self, choices: np.ndarray, keys: Sequence[bytes]) -> None:
        bits = choices.astype(np.uint8)
        self.column_mask = (np.uint8(0) - bits)[:, None]  # 0xff where s_i = 1
        self.s_sigma = _sigma(np.packbits(bits, bitorder="little")[None, :])[0]
        self.streams = [CipherStream(k) for k in keys]
        self.counter = 0

    def rows(self, u: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        q = _read_columns(self.streams, _padded(count) // 8)
        q ^= u & self.column_mask
        index = np.arange(self.counter, self.counter + count, dtype=np.uint64)
        self.counter += count
        return transpose_bits(q, count), index


class ExtensionReceiver:
    """Holds both base keys per column; makes u for its choice bits and the t rows."""

    def __init__(self, keys: Sequence[tuple[bytes, bytes]]) -> None:
        self.streams0 = [CipherStream(k0) for k0, _ in keys]
        self.streams1 = [CipherStream(k1) for _, k1 in keys]
        self.counter = 0

    def columns(self, choices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        count = len(choices)
        width = _padded(count) // 8
        r = np.zeros(width, dtype=np.uint8)
        packed = np.packbits(choices, bitorder="little")
        r[: len(packed)] = packed
        t = _read_columns(self.streams0, width)
        u = _read_columns(self.streams1, width)
        u ^= t
        u ^= r[None, :]
        index = np.arange(self.counter, self.counter + count, dtype=np.uint64)
        self.counter += count
        return u, transpose_bits(t, count), index


# -- requests --------------------------------------------------------------------------------------
@dataclasses.dataclass
class Cot:
    """One correlated-OT request, the same shape on both parties.

    ``mine`` OTs where I choose (``choices(a, b)``: my bits for my OTs a..b-1) and ``theirs``
    where the peer chooses (``deltas(a, b)``: my (b - a, words) correlations for its OTs
    a..b-1). Results come back summed over each ``group`` of consecutive OTs (for ``binary``
    requests: bit ``i % group`` of a word, XOR-ed).
    """

    mine: int
    theirs: int
    words: int
    choices: Callable[[int, int], np.ndarray]
    deltas: Callable[[int, int], np.ndarray]
    group: int = 1
    binary: bool = False

    def tau_bytes(self, count: int) -> int:
        """Bytes on the wire for the corrections of ``count`` of this request's OTs."""
        return (count * self.words + 7) // 8 if self.binary else count * self.words * 8


def _chunk_bounds(counts: Sequence[int], words: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Consecutive ranges of OTs (over all requests in turn) of at most ``budget`` words each
    (a single OT wider than that gets a range of its own)."""
    bounds, low, position, used = [], 0, 0, 0
    for count, width in zip(counts, words):
        while count:
            room = (budget - used) // width
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


def _accumulate(out: np.ndarray, request: Cot, first: int, values: np.ndarray) -> None:
    """Add (XOR, for binary requests) ``values`` for OTs first.. into their groups' rows of ``out``."""
    group = request.group
    if group == 1:
        out[first: first + len(values)] = values
        return
    if request.binary:
        shifts = (np.arange(first, first + len(values)) % group).astype(np.uint64)
        values = values << shifts[:, None]
    reduce = np.bitwise_xor.reduce if request.binary else (lambda v, axis: v.sum(axis=axis, dtype=np.uint64))
    # a partial group up to the first boundary, whole groups, a partial group at the end
    head = min((-first) % group, len(values))
    whole = (len(values) - head) // group
    tail = head + whole * group
    pieces = ([reduce(values[:head], axis=0)[None]] if head else []) + (
        [reduce(values[head:tail].reshape(whole, group, -1), axis=1)] if whole else []) + (
        [reduce(values[tail:], axis=0)[None]] if tail < len(values) else [])
    sums = np.concatenate(pieces)
    target = out[first // group: first // group + len(sums)]
    if request.binary:
        target ^= sums
    else:
        target += sums


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

    def _swap(self, outgoing: np.ndarray, expected: int, what: str) -> np.ndarray:
        """Send ``outgoing`` (uint8) and receive the peer's message of ``expected`` bytes.

        Each message is a header (exchange number, byte count) then the bytes; a header that
        is not this exchange's, or announces another length, is refused before any payload is read.
        """
        body = torch.from_numpy(np.ascontiguousarray(outgoing).reshape(-1).view(np.uint8))
        header = torch.tensor([self.exchanges, body.numel()], dtype=torch.int64)
        handles = [self.comm.isend(header, self.peer)] + ([self.comm.isend(body, self.peer)] if body.numel() else [])
        peer_header = torch.empty(2, dtype=torch.int64)
        self.comm.irecv(peer_header, self.peer).wait()
        exchange, size = (int(v) for v in peer_header)
        if exchange != self.exchanges or size != expected:
            raise OtError(f"the OT peer sent a malformed {what} message: exchange {exchange} of {size} bytes, "
                          f"expected exchange {self.exchanges} of {expected} bytes")
        incoming = torch.empty(expected, dtype=torch.uint8)
        if expected:
            self.comm.irecv(incoming, self.peer).wait()
        for handle in handles:
            handle.wait()
        received = incoming.numpy()
        if self.record:
            self.views.append((what, received.copy()))
        return received

    def correlated_many(self, requests: Sequence[Cot]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every request's (received, own) group sums: as receiver, p0 + c * delta per OT; as
        sender -p0 (my additive share) or, if ``binary``, p0 (my XOR share)."""
        mine, theirs = [r.mine for r in requests], [r.theirs for r in requests]
        words = [r.words for r in requests]
        received = [np.zeros(((r.mine + r.group - 1) // r.group, r.words), np.uint64) for r in requests]
        own = [np.zeros(((r.theirs + r.group - 1) // r.group, r.words), np.uint64) for r in requests]
        my_bounds = _chunk_bounds(mine, words, CHUNK_WORDS)
        peer_bounds = _chunk_bounds(theirs, words, CHUNK_WORDS)
        for my_range, peer_range in itertools.zip_longest(my_bounds, peer_bounds, fillvalue=(0, 0)):
            self._exchange(requests, my_range, peer_range, received, own)
        self.ots += sum(mine) + sum(theirs)
        return list(zip(received, own))

    def _exchange(self, requests: Sequence[Cot], my_range: tuple[int, int], peer_range: tuple[int, int],
                  received: list[np.ndarray], own: list[np.ndarray]) -> None:
        """One chunk: my OTs my_range as receiver, the peer's peer_range as sender."""
        mine, theirs = [r.mine for r in requests], [r.theirs for r in requests]
        my_segments = list(_segments(mine, *my_range))
        choices = np.concatenate([np.zeros(0, np.uint8)] + [requests[i].choices(a, b).astype(np.uint8)
                                                            for i, a, b, _ in my_segments])
        u, t_rows, t_index = self.receiver.columns(choices)
        peer_count = peer_range[1] - peer_range[0]
        peer_u = self._swap(u, KAPPA * _padded(peer_count) // 8, "extension").reshape(KAPPA, -1)
        q_rows, q_index = self.sender.rows(peer_u, peer_count)
        taus = [np.zeros(0, np.uint8)]
        for i, a, b, offset in _segments(theirs, *peer_range):  # sender side
            request, rows = requests[i], slice(offset, offset + b - a)
            sigma = _sigma(q_rows[rows])
            p0, p1 = _hash_sigma(np.stack([sigma, sigma ^ self.sender.s_sigma]), q_index[rows], request.words)
            deltas = request.deltas(a, b)
            if request.binary:  # one bit per OT on the wire
                p0, p1 = p0 & _ONE, p1 & _ONE
                taus.append(np.packbits((p1 ^ p0 ^ deltas).reshape(-1).astype(np.uint8), bitorder="little"))
                _accumulate(own[i], request, a, p0)
            else:
                taus.append((p1 - p0 - deltas).reshape(-1).view(np.uint8))
                _accumulate(own[i], request, a, np.uint64(0) - p0)
        expected = sum(requests[i].tau_bytes(b - a) for i, a, b, _ in my_segments)
        peer_taus, position = self._swap(np.concatenate(taus), expected, "correction"), 0
        for i, a, b, offset in my_segments:  # receiver side
            request, rows, count = requests[i], slice(offset, offset + b - a), b - a
            raw = peer_taus[position: position + request.tau_bytes(count)]
            position += len(raw)
            pads = hash_rows(t_rows[rows], t_index[rows], request.words)
            chosen = (np.uint64(0) - choices[rows].astype(np.uint64))[:, None]  # all ones where c = 1
            if request.binary:
                tau = np.unpackbits(raw, bitorder="little")[: count * request.words]
                values = (pads & _ONE) ^ (tau.astype(np.uint64).reshape(count, request.words) & chosen)
            else:
                values = pads - (np.frombuffer(raw.tobytes(), np.uint64).reshape(count, request.words) & chosen)
            _accumulate(received[i], request, a, values)
        self.exchanges += 1
