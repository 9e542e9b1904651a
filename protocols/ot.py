"""Dealer-free two-party preprocessing from oblivious transfer.

* Base OTs: 128 Chou-Orlandi OTs in edwards25519's prime-order subgroup, every group
  operation libsodium's constant-time code (PyNaCl), keys hashed with SHA-256 over the
  whole OT transcript.
* OT extension: IKNP (semi-honest), with AES-CTR to stretch the base seeds and a fixed-key
  AES hash (tweaked, with the orthomorphism sigma) to break the correlation; everything
  runs on numpy arrays, millions of OTs per call.
* Correlated OT gives Gilboa multiplication over Z_2^64: for each bit y_i of the
  receiver's y, the sender's correlation is x * 2^i; summing gives additive shares of x*y.
  Vectors: the correlation for bit i of Q[k, n] is the column P[:, k] * 2^i, which gives
  shares of P @ Q with k*n*64 OTs.
* From those: Beaver triples (elementwise and matmul: two Gilboa products, one in each
  direction, run together), squares (one product), binary AND triples (bit COTs), B2A bits
  and truncation pairs for power-of-two divisors (64 bit-times-word COTs per element).

Each party is OT sender in one extension instance and receiver in the other, so both
directions run at once, and any number of tuples (a whole training step's, batched by
``protocols.tuples.Prefetcher``) costs two messages each way.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import time
from typing import Any, Sequence

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from nacl.bindings import (crypto_core_ed25519_add, crypto_core_ed25519_is_valid_point,
                           crypto_core_ed25519_scalar_reduce, crypto_core_ed25519_sub,
                           crypto_scalarmult_ed25519_base_noclamp, crypto_scalarmult_ed25519_noclamp)
from nacl.exceptions import CryptoError

from protocols.parts import UnsupportedTuple, metered
from protocols.prg import CipherStream
from protocols.registry import register_part
from protocols.tuples import KeyedTripleSource, Prefetcher, freeze, tuple_elements

log = logging.getLogger("cotrain.ot")

KAPPA = 128
_BASE_OT_TAG = b"cotrain-base-ot-ed25519"
POINT_BYTES = 32


class OtError(RuntimeError):
    """The OT peer sent something malformed."""


# -- base OTs on libsodium's edwards25519 ---------------------------------------------------------
# Chou-Orlandi's "simplest OT" in the prime-order subgroup of edwards25519. Every operation
# on a secret (scalar multiplication, point addition, scalar reduction) is libsodium's
# constant-time code; the receiver computes both candidate messages for every OT and picks
# one with a byte mask, so nothing here branches or indexes on a choice bit.
def _random_scalar() -> bytes:
    """A uniform scalar mod the group order (64 random bytes reduced)."""
    return crypto_core_ed25519_scalar_reduce(secrets.token_bytes(64))


def _multiply(scalar: bytes, point: bytes) -> bytes:
    """scalar * point; libsodium refuses points off the prime-order subgroup and the identity."""
    try:
        return crypto_scalarmult_ed25519_noclamp(scalar, point)
    except CryptoError:
        raise OtError("the OT peer sent a point that is not a valid edwards25519 group element") from None


def _kdf(index: int, sender_point: bytes, receiver_point: bytes, shared: bytes) -> bytes:
    """The 128-bit key of OT ``index``, bound to both messages of that OT."""
    return hashlib.sha256(_BASE_OT_TAG + index.to_bytes(4, "little") + sender_point + receiver_point
                          + shared).digest()[:16]


def _checked_points(data: Any, count: int, what: str) -> list[bytes]:
    if not isinstance(data, bytes) or len(data) != count * POINT_BYTES:
        raise OtError(f"the OT peer sent a malformed base-OT {what} (expected {count} points)")
    return [data[i * POINT_BYTES: (i + 1) * POINT_BYTES] for i in range(count)]


def base_ot_send(comm: Any, peer: int, count: int = KAPPA) -> list[tuple[bytes, bytes]]:
    """Sender side of ``count`` random base OTs: both 128-bit keys of each.

    Sends A = aG; receives B_i = b_i G + c_i A; key 0 is H(a B_i), key 1 is H(a (B_i - A)).
    """
    a = _random_scalar()
    big_a = crypto_scalarmult_ed25519_base_noclamp(a)
    comm.send_obj(big_a, peer)
    keys = []
    for index, point in enumerate(_checked_points(comm.recv_obj(peer), count, "receiver message")):
        k0 = _kdf(index, big_a, point, _multiply(a, point))
        try:
            b_minus_a = crypto_core_ed25519_sub(point, big_a)
        except CryptoError:
            raise OtError("the OT peer sent a point that is not on edwards25519") from None
        keys.append((k0, _kdf(index, big_a, point, _multiply(a, b_minus_a))))
    return keys


def base_ot_receive(comm: Any, peer: int, choices: np.ndarray) -> list[bytes]:
    """Receiver side: the key of each OT that ``choices`` (0/1 per OT) selects."""
    big_a = _checked_points(comm.recv_obj(peer), 1, "sender message")[0]
    if not crypto_core_ed25519_is_valid_point(big_a):
        raise OtError("the OT peer sent a point that is not a valid edwards25519 group element")
    scalars = [_random_scalar() for _ in range(len(choices))]
    unchosen = [crypto_scalarmult_ed25519_base_noclamp(b) for b in scalars]  # b G
    shifted = [crypto_core_ed25519_add(point, big_a) for point in unchosen]  # b G + A
    # B = bG ^ ((bG ^ (bG + A)) & mask), mask = 0xff where the choice is 1: no branch on it
    plain = np.frombuffer(b"".join(unchosen), dtype=np.uint8).reshape(-1, POINT_BYTES)
    plus = np.frombuffer(b"".join(shifted), dtype=np.uint8).reshape(-1, POINT_BYTES)
    mask = (np.uint8(0) - np.asarray(choices, dtype=np.uint8))[:, None]
    message = (plain ^ ((plain ^ plus) & mask)).tobytes()
    comm.send_obj(message, peer)
    points = _checked_points(message, len(choices), "receiver message")
    return [_kdf(index, big_a, point, _multiply(b, big_a)) for index, (b, point) in enumerate(zip(scalars, points))]


# -- the correlation-robust hash ----------------------------------------------------------------
_HASH_CIPHER = Cipher(algorithms.AES(hashlib.sha256(b"cotrain-ot-fixed-key").digest()[:16]), modes.ECB())


def hash_rows(rows: np.ndarray, index: np.ndarray, words: int) -> np.ndarray:
    """H(j, x_j) as ``words`` uint64 per row: pi(sigma(x) ^ t) ^ sigma(x) ^ t, t = (j, block).

    ``rows`` is (m, 16) uint8, ``index`` the (m,) global OT indices.
    """
    halves = rows.view(np.uint64).reshape(-1, 2)
    sigma = np.empty_like(halves)
    sigma[:, 0] = halves[:, 0] ^ halves[:, 1]
    sigma[:, 1] = halves[:, 0]
    blocks = (words + 1) // 2
    tweaked = np.repeat(sigma[:, None, :], blocks, axis=1)
    tweaked[:, :, 0] ^= index.astype(np.uint64)[:, None]
    tweaked[:, :, 1] ^= np.arange(blocks, dtype=np.uint64)[None, :] + np.uint64(1)
    encryptor = _HASH_CIPHER.encryptor()
    out = np.frombuffer(encryptor.update(tweaked.tobytes()), dtype=np.uint64).reshape(tweaked.shape)
    return (out ^ tweaked).reshape(len(rows), blocks * 2)[:, :words]


def _transpose(columns: np.ndarray, count: int) -> np.ndarray:
    """(128, m/8) bit columns to (m, 16) byte rows.

    Bytes are transposed first; then each group of 8 bytes (8 columns x 8 OTs) is an 8x8
    bit matrix in one uint64, transposed with three masked shift-and-swap steps.
    """
    width = columns.shape[1]
    x = np.ascontiguousarray(columns.T).view(np.uint64)  # (width, 16): 8 columns per word
    for shift, mask in ((7, 0x00AA00AA00AA00AA), (14, 0x0000CCCC0000CCCC), (28, 0x00000000F0F0F0F0)):
        t = (x ^ (x >> np.uint64(shift))) & np.uint64(mask)
        x = x ^ t ^ (t << np.uint64(shift))
    return np.ascontiguousarray(x.view(np.uint8).reshape(width, 16, 8).transpose(0, 2, 1)).reshape(width * 8, 16)[:count]


def _padded(count: int) -> int:
    return (count + 7) // 8 * 8


# -- IKNP extension: one direction -----------------------------------------------------------------
class ExtensionSender:
    """Holds s and the base keys k_i^{s_i}; turns the receiver's u into q rows."""

    def __init__(self, choices: np.ndarray, keys: Sequence[bytes]) -> None:
        self.s_bits = choices.astype(np.uint8)
        self.s_row = np.packbits(self.s_bits, bitorder="little")
        self.streams = [CipherStream(k) for k in keys]
        self.counter = 0

    def rows(self, u: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        width = _padded(count) // 8
        columns = np.stack([stream.read(width) for stream in self.streams])
        columns ^= u * self.s_bits[:, None]
        index = np.arange(self.counter, self.counter + count, dtype=np.uint64)
        self.counter += count
        return _transpose(columns, count), index


class ExtensionReceiver:
    """Holds both base keys per column; makes u for its choice bits and the t rows."""

    def __init__(self, keys: Sequence[tuple[bytes, bytes]]) -> None:
        self.streams = [(CipherStream(k0), CipherStream(k1)) for k0, k1 in keys]
        self.counter = 0

    def columns(self, choices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        count = len(choices)
        width = _padded(count) // 8
        r = np.packbits(choices.astype(np.uint8), bitorder="little")
        r = np.pad(r, (0, width - len(r)))
        t = np.stack([s0.read(width) for s0, _ in self.streams])
        u = t ^ np.stack([s1.read(width) for _, s1 in self.streams]) ^ r[None, :]
        index = np.arange(self.counter, self.counter + count, dtype=np.uint64)
        self.counter += count
        return u, _transpose(t, count), index


class OtChannel:
    """Both extension directions between this party and its one peer, with traffic views."""

    def __init__(self, comm: Any, peer: int, record: bool = False) -> None:
        self.comm = comm
        self.peer = peer
        self.rank = comm.get_rank()
        self.record = record
        self.views: list[tuple[str, np.ndarray]] = []
        self.ots = 0
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

    def _swap(self, outgoing: np.ndarray, incoming_shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """Send ``outgoing`` and receive the peer's array of a known shape, concurrently."""
        # one extra byte: no message is empty (one direction may carry no OTs)
        body = np.ascontiguousarray(outgoing).reshape(-1).view(np.uint8)
        out = torch.from_numpy(np.concatenate([body, np.zeros(1, np.uint8)]))
        incoming = torch.empty(int(np.prod(incoming_shape)) * np.dtype(dtype).itemsize + 1, dtype=torch.uint8)
        handles = [self.comm.isend(out, self.peer), self.comm.irecv(incoming, self.peer)]
        for handle in handles:
            handle.wait()
        received = incoming.numpy()[:-1].view(dtype).reshape(incoming_shape)
        if self.record:
            self.views.append(("received", received.copy()))
        return received

    def correlated(self, my_choices: np.ndarray, my_deltas: np.ndarray, peer_count: int,
                   words: int, binary: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """One round trip of COTs in both directions (see :meth:`correlated_many`)."""
        return self.correlated_many([Cot(my_choices, my_deltas, peer_count, words, binary)])[0]

    def correlated_many(self, requests: Sequence["Cot"]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Many COT requests in one extension: two messages each way, however many requests.

        For each request, as receiver: ``choices`` (m_r bits) give values p0 + c * delta
        (m_r x words); as sender: ``deltas`` (m_s x words, m_s = ``peer_count``) give -p0 (my
        additive share) or, if ``binary``, p0 (my XOR share; words are single bits).
        """
        for r in requests:
            if r.deltas.shape != (r.peer_count, r.words):
                raise ValueError(f"correlations of shape {r.deltas.shape}, expected {(r.peer_count, r.words)}")
        choices = np.concatenate([r.choices.astype(np.uint8) for r in requests]) if requests else np.zeros(0, np.uint8)
        peer_total = sum(r.peer_count for r in requests)
        u, t_rows, r_index = self.receiver.columns(choices)
        peer_u = self._swap(u, (KAPPA, _padded(peer_total) // 8), np.uint8)
        q_rows, s_index = self.sender.rows(peer_u, peer_total)
        taus, owns, offset = [], [], 0
        for r in requests:  # sender side, request by request
            q, index = q_rows[offset: offset + r.peer_count], s_index[offset: offset + r.peer_count]
            offset += r.peer_count
            p0 = hash_rows(q, index, r.words)
            p1 = hash_rows(q ^ self.sender.s_row[None, :], index, r.words)
            if r.binary:  # one bit per OT on the wire
                p0, p1 = p0 & np.uint64(1), p1 & np.uint64(1)
                taus.append(np.packbits((p1 ^ p0 ^ r.deltas).reshape(-1).astype(np.uint8), bitorder="little"))
                owns.append(p0)
            else:
                taus.append((p1 - p0 - r.deltas).reshape(-1).view(np.uint8))
                owns.append(np.uint64(0) - p0)
        sizes = [(_padded(len(r.choices) * r.words) // 8 if r.binary else len(r.choices) * r.words * 8)
                 for r in requests]
        outgoing = np.concatenate(taus) if taus else np.zeros(0, np.uint8)
        peer_taus = self._swap(outgoing, (sum(sizes),), np.uint8)
        results, offset, row = [], 0, 0
        for r, size, own in zip(requests, sizes, owns):  # receiver side
            m_r = len(r.choices)
            raw, offset = peer_taus[offset: offset + size], offset + size
            if r.binary:
                peer_tau = np.unpackbits(raw, bitorder="little")[: m_r * r.words].astype(np.uint64).reshape(m_r, r.words)
            else:
                peer_tau = raw.view(np.uint64).reshape(m_r, r.words)
            mine = hash_rows(t_rows[row: row + m_r], r_index[row: row + m_r], r.words)
            row += m_r
            chosen = r.choices.astype(np.uint64)[:, None]
            if r.binary:
                results.append(((mine & np.uint64(1)) ^ (peer_tau * chosen), own))
            else:
                results.append((mine - peer_tau * chosen, own))
        self.ots += len(choices) + peer_total
        return results


class Cot:
    """One correlated-OT request: my choice bits, my correlations for the peer's choices."""

    def __init__(self, choices: np.ndarray, deltas: np.ndarray, peer_count: int, words: int,
                 binary: bool = False) -> None:
        self.choices, self.deltas, self.peer_count, self.words, self.binary = choices, deltas, peer_count, words, binary


def _bits(values: np.ndarray) -> np.ndarray:
    """(..., ) uint64 to (..., 64) bits, least significant first."""
    return ((values[..., None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)


_POWERS = (np.uint64(1) << np.arange(64, dtype=np.uint64))


Plan = tuple  # (Cot, finish: (received, own) -> my share)


class GilboaEngine:
    """Cross products between the two parties' private ring values, from an OtChannel.

    Each product is a *plan* (a COT request and how to finish it); :meth:`run` executes any
    number of plans in one extension (two messages each way).
    """

    def __init__(self, channel: OtChannel) -> None:
        self.channel = channel
        self.leader = channel.rank < channel.peer

    def run(self, plans: Sequence[Plan]) -> list[np.ndarray]:
        results = self.channel.correlated_many([cot for cot, _ in plans])
        return [finish(received, own) for (_, finish), (received, own) in zip(plans, results)]

    def plan_matmul(self, left: np.ndarray, right: np.ndarray) -> Plan:
        """Shares of L0 @ R1 + L1 @ R0 (uint64 matrices; party 0 holds L0, R0; party 1 L1, R1).

        Each party is OT receiver for its ``right`` bits (k x n x 64 OTs, correlations of m
        words) and sender with its ``left`` columns as correlations for the peer's bits.
        """
        m, k = left.shape
        n = right.shape[1]
        choices = _bits(right).reshape(-1)  # order (k, n, bit)
        deltas = left.T[:, None, None, :] * _POWERS[None, None, :, None]  # (k, 1, 64, m)
        deltas = np.broadcast_to(deltas, (k, n, 64, m)).reshape(-1, m)

        def finish(received: np.ndarray, own: np.ndarray) -> np.ndarray:
            # rows (k, n, bit) summed over k and bit: shares of (L_peer @ R_mine)^T etc.
            mine = received.reshape(k, n, 64, m).sum(axis=(0, 2), dtype=np.uint64).T
            return mine + own.reshape(k, n, 64, m).sum(axis=(0, 2), dtype=np.uint64).T

        return Cot(choices, deltas, k * n * 64, m), finish

    def plan_elementwise(self, left: np.ndarray, right: np.ndarray) -> Plan:
        """Shares of x0*y1 + x1*y0 for flat uint64 vectors (party i holds x_i = left, y_i = right)."""
        count = left.size
        deltas = (left[:, None] * _POWERS[None, :]).reshape(-1, 1)

        def finish(received: np.ndarray, own: np.ndarray) -> np.ndarray:
            return (received.reshape(count, 64).sum(axis=1, dtype=np.uint64)
                    + own.reshape(count, 64).sum(axis=1, dtype=np.uint64))

        return Cot(_bits(right).reshape(-1), deltas, count * 64, 1), finish

    def plan_one_way(self, left: np.ndarray, right: np.ndarray) -> Plan:
        """Shares of x0 * y1 only (party 0's ``left``, party 1's ``right``)."""
        count = max(left.size, right.size)
        if self.leader:
            cot = Cot(np.zeros(0, np.uint8), (left[:, None] * _POWERS[None, :]).reshape(-1, 1), count * 64, 1)
            return cot, lambda received, own: own.reshape(count, 64).sum(axis=1, dtype=np.uint64)
        cot = Cot(_bits(right).reshape(-1), np.zeros((0, 1), np.uint64), 0, 1)
        return cot, lambda received, own: received.reshape(count, 64).sum(axis=1, dtype=np.uint64)

    def plan_bits_times_words(self, my_bits: np.ndarray, my_words: np.ndarray) -> Plan:
        """Shares of b0*w1 + b1*w0 where b are single bits (one COT per element each way)."""
        count = my_bits.size
        cot = Cot(my_bits.astype(np.uint8), my_words.reshape(-1, 1), count, 1)
        return cot, lambda received, own: received.reshape(-1) + own.reshape(-1)

    def plan_and(self, left: np.ndarray, right: np.ndarray) -> Plan:
        """XOR shares of (x0 & y1) ^ (x1 & y0), bitwise on 64-bit words."""
        count = left.size

        def finish(received: np.ndarray, own: np.ndarray) -> np.ndarray:
            bits = (received.reshape(count, 64) ^ own.reshape(count, 64)).astype(np.uint64)
            return np.bitwise_or.reduce(bits << np.arange(64, dtype=np.uint64)[None, :], axis=1)

        cot = Cot(_bits(right).reshape(-1), _bits(left).reshape(-1, 1).astype(np.uint64), count * 64, 1, binary=True)
        return cot, finish

    # one plan at a time
    def cross_matmul(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        return self.run([self.plan_matmul(left, right)])[0]

    def cross_elementwise(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        return self.run([self.plan_elementwise(left, right)])[0]

    def one_way_elementwise(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        return self.run([self.plan_one_way(left, right)])[0]

    def cross_bits_times_words(self, my_bits: np.ndarray, my_words: np.ndarray) -> np.ndarray:
        return self.run([self.plan_bits_times_words(my_bits, my_words)])[0]

    def cross_and(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        return self.run([self.plan_and(left, right)])[0]


# -- the triple source ---------------------------------------------------------------------------
def _random_words(shape: Sequence[int]) -> np.ndarray:
    count = int(math.prod(shape))
    return np.frombuffer(secrets.token_bytes(8 * count), dtype=np.uint64).reshape(tuple(shape)).copy()


def matmul_u64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b over Z_2^64 (torch's int64 matmul wraps)."""
    return (torch.from_numpy(a.view(np.int64)) @ torch.from_numpy(b.view(np.int64))).numpy().view(np.uint64)


# CrypTen's Beaver products: c = op(a, b), bilinear in (a, b)
BILINEAR_OPS = ("mul", "matmul", "conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d")


# a bilinear triple's correlations (operand elements x 64 bits x output elements): 256 MiB
MAX_BILINEAR_WORDS = 1 << 25


def _apply(op: str, kwargs: dict, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """op(a, b) over Z_2^64 (torch's int64 products wrap)."""
    return getattr(torch, op)(torch.from_numpy(a.view(np.int64)), torch.from_numpy(b.view(np.int64)),
                              **kwargs).numpy().view(np.uint64)


def _plan_bilinear(engine: GilboaEngine, op: str, kwargs: dict, a: np.ndarray, b: np.ndarray) -> tuple[Plan, Any]:
    """A triple of any bilinear ``op`` (convolutions, products of a vector) from one matrix product:
    op(a, b) = sum_j b_j op(a, e_j), so with M_i's rows op(a_i, e_j) (local), the cross terms
    op(a_0, b_1) + op(a_1, b_0) are M_0^T b_1 + M_1^T b_0. The basis runs over the smaller
    operand (the sizes are public, so both parties choose alike): its 64 bits per element are
    the OT choices."""
    on_right = b.size <= a.size
    small = b if on_right else a
    product = _apply(op, kwargs, a, b)
    words = small.size * 64 * product.size  # the correlations of the matrix product
    if words > MAX_BILINEAR_WORDS:
        raise UnsupportedTuple(f"protocol=ot makes {op} triples of up to {MAX_BILINEAR_WORDS} correlation words; "
                               f"{tuple(a.shape)} with {tuple(b.shape)} needs {words} (use protocol=dealer)")
    basis = np.eye(small.size, dtype=np.uint64).reshape(small.size, *small.shape)
    images = np.stack([_apply(op, kwargs, a, unit) if on_right else _apply(op, kwargs, unit, b) for unit in basis])
    plan = engine.plan_matmul(np.ascontiguousarray(images.reshape(small.size, -1).T), small.reshape(-1, 1))
    return plan, lambda cross: [_tensor(a, a.shape), _tensor(b, b.shape),
                                _tensor(product + cross.reshape(product.shape), product.shape)]


def _tensor(array: np.ndarray, shape: Sequence[int]) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array).view(np.int64).reshape(tuple(shape)).copy())


@register_part("triple_source", "ot")
class OtTripleSource(KeyedTripleSource):
    """Two-party tuples from OT extension: no dealer, no trusted party.

    Requests are batched like the dealer's (see ``protocols.tuples.Prefetcher``): after the
    first training step, a whole step's tuples come from one OT extension, two messages
    each way.
    """

    max_parties = 2
    provider_name = "COTRAIN_OT"

    def __init__(self) -> None:
        super().__init__()
        self.engine: GilboaEngine | None = None
        self.prefetcher = Prefetcher(self.produce)
        self.seconds = 0.0

    def start(self, crypten: Any) -> None:
        comm = crypten.communicator.get()
        if comm.get_world_size() != 2:
            raise ValueError(f"protocol=ot is a two-party protocol; this session has {comm.get_world_size()} "
                             "parties (use protocol=dealer for more)")
        with metered(self.counters, "offline"):
            self.engine = GilboaEngine(OtChannel(comm, 1 - comm.get_rank()))

    def fetch(self, key: tuple) -> list[torch.Tensor]:
        if self.engine is None:
            raise RuntimeError("the OT triple source was used before the secure session started")
        return self.prefetcher.fetch(key)

    def truncation_pair(self, size: Any, divisor: int, device: Any = None) -> tuple[Any, Any, Any]:
        from crypten.mpc.primitives import ArithmeticSharedTensor as AST

        key = ("trunc", freeze(size), int(divisor))
        self.counters.calls += 1
        self.counters.tuples += tuple_elements(key)
        return tuple(AST.from_shares(s.to(device) if device is not None else s, precision=0) for s in self.fetch(key))

    def supports_divisor(self, divisor: int) -> bool:
        return divisor > 0 and divisor & (divisor - 1) == 0

    # -- making tuples -----------------------------------------------------------------------
    def produce(self, keys: list[tuple]) -> list[list[torch.Tensor]]:
        """Every tuple of ``keys`` from one OT extension run."""
        start = time.perf_counter()
        planned = [self._plans(key) for key in keys]
        with metered(self.counters, "offline"):
            results = self.engine.run([plan for plans, _ in planned for plan in plans])
        out, start_index = [], 0
        for plans, assemble in planned:
            out.append(assemble(results[start_index:start_index + len(plans)]))
            start_index += len(plans)
        self.seconds += time.perf_counter() - start
        return out

    def _plans(self, key: tuple) -> tuple[list[Plan], Any]:
        """The OT plans for one tuple, and how to turn their results into this party's shares."""
        if key[0] == "triple" and key[1] == "matmul" and min(len(key[2]), len(key[3])) >= 2 and len(key[3]) > 2:
            return self._plan_batched_matmul(key[2], key[3])
        plan, assemble = self._plan(key)
        return [plan], lambda results: assemble(results[0])

    def _plan_batched_matmul(self, size0: tuple, size1: tuple) -> tuple[list[Plan], Any]:
        """A batch of matrix products (both operands batched, with broadcasting): one 2-d
        plan per product of the batch."""
        batch = np.broadcast_shapes(size0[:-2], size1[:-2])
        a, b = _random_words(size0), _random_words(size1)
        a_full = np.broadcast_to(a, batch + size0[-2:]).reshape(-1, *size0[-2:])
        b_full = np.broadcast_to(b, batch + size1[-2:]).reshape(-1, *size1[-2:])
        pairs = [self._plan_matmul(x.copy(), y.copy()) for x, y in zip(a_full, b_full)]  # broadcast views are read-only

        def assemble(results: list[np.ndarray]) -> list[torch.Tensor]:
            c = np.stack([product(cross) for (_, product), cross in zip(pairs, results)])
            return [_tensor(a, size0), _tensor(b, size1), _tensor(c, batch + (size0[-2], size1[-1]))]

        return [plan for plan, _ in pairs], assemble

    def _plan_matmul(self, a: np.ndarray, b: np.ndarray) -> tuple[Plan, Any]:
        """The plan of a 2-d product and how its result gives this party's share of a @ b."""
        if b.shape[1] <= a.shape[0]:  # fewer OTs with the right operand's bits
            return self.engine.plan_matmul(a, b), lambda cross: matmul_u64(a, b) + cross
        # (A @ B)^T = B^T @ A^T
        plan = self.engine.plan_matmul(np.ascontiguousarray(b.T), np.ascontiguousarray(a.T))
        return plan, lambda cross: matmul_u64(a, b) + cross.T

    def _plan(self, key: tuple) -> tuple[Plan, Any]:
        """The OT plan for one tuple and how to turn its result into this party's shares."""
        engine, kind = self.engine, key[0]
        if kind == "triple":
            _, op, size0, size1, kwargs = key
            if op not in BILINEAR_OPS or (op == "mul" and kwargs):
                raise UnsupportedTuple(f"protocol=ot makes no {op} {dict(kwargs)} triples")
            if op == "matmul" and len(size0) > 2 and len(size1) == 2:  # a batch of rows times one matrix
                plan, assemble = self._plan(("triple", op, (int(math.prod(size0[:-1])), size0[-1]), size1, ()))

                def batched(cross: np.ndarray) -> list[torch.Tensor]:
                    a, b, c = assemble(cross)
                    return [a.reshape(size0), b, c.reshape(*size0[:-1], size1[1])]

                return plan, batched
            a, b = _random_words(size0), _random_words(size1)
            if op == "mul":
                shape = np.broadcast_shapes(size0, size1)
                a_full = np.broadcast_to(a, shape).reshape(-1).copy()
                b_full = np.broadcast_to(b, shape).reshape(-1).copy()
                return engine.plan_elementwise(a_full, b_full), lambda cross: [
                    _tensor(a, size0), _tensor(b, size1), _tensor(a_full * b_full + cross, shape)]
            if op != "matmul" or len(size0) != 2 or len(size1) != 2:
                return _plan_bilinear(engine, op, dict(kwargs), a, b)
            plan, product = self._plan_matmul(a, b)
            return plan, lambda cross: [_tensor(a, size0), _tensor(b, size1),
                                        _tensor(product(cross), (size0[0], size1[1]))]
        if kind == "square":
            size = key[1]
            r = _random_words(size).reshape(-1)
            return engine.plan_one_way(r, r), lambda cross: [_tensor(r, size), _tensor(r * r + np.uint64(2) * cross, size)]
        if kind == "binary":
            _, size0, size1 = key
            a, b = _random_words(size0), _random_words(size1)
            shape = np.broadcast_shapes(size0, size1)
            a_full = np.broadcast_to(a, shape).reshape(-1).copy()
            b_full = np.broadcast_to(b, shape).reshape(-1).copy()
            return engine.plan_and(a_full, b_full), lambda cross: [
                _tensor(a, size0), _tensor(b, size1), _tensor((a_full & b_full) ^ cross, shape)]
        if kind == "b2a":
            size = key[1]
            bits = _random_words(size).reshape(-1) & np.uint64(1)
            # b = b0 + b1 - 2 b0 b1; the plan gives shares of b0*b1 + b1*b0
            return engine.plan_bits_times_words(bits.astype(np.uint8), bits), lambda cross: [
                _tensor(bits - cross, size), _tensor(bits, size)]
        if kind == "trunc":
            _, size, divisor = key
            if not self.supports_divisor(divisor):
                raise ValueError(f"protocol=ot makes truncation pairs for powers of two, not {divisor}")
            count, shift = int(math.prod(size)), divisor.bit_length() - 1
            bits = _random_words((count * 64,)) & np.uint64(1)

            def assemble(cross: np.ndarray) -> list[torch.Tensor]:
                shared = (bits - cross).reshape(count, 64)  # arithmetic shares of 64 random bits
                r = (shared * _POWERS[None, :]).sum(axis=1, dtype=np.uint64)
                low = (shared[:, shift:63] * _POWERS[None, : 63 - shift]).sum(axis=1, dtype=np.uint64)
                return [_tensor(r, size), _tensor(shared[:, 63], size), _tensor(low, size)]

            return engine.plan_bits_times_words(bits.astype(np.uint8), bits), assemble
        if kind == "wrap":
            raise UnsupportedTuple("protocol=ot makes no wrap tuples; use truncation=pairs "
                                      "(or truncation=local with two parties)")
        raise ValueError(f"unknown tuple kind {kind!r}")

    def describe(self) -> str:
        return "ot (two-party: edwards25519 base OTs, IKNP extension, Gilboa multiplication)"
