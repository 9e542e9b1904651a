"""Dealer-free two-party preprocessing from oblivious transfer.

* Base OTs: 128 Chou-Orlandi OTs in edwards25519 (``protocols.base_ot``).
* OT extension: IKNP (semi-honest), correlated OTs in exchanges of bounded size
  (``protocols.ot_extension``); millions of OTs per exchange.
* Correlated OT gives Gilboa multiplication over Z_2^64: for each bit y_i of the
  receiver's y, the sender's correlation is x * 2^i; summing gives additive shares of x*y.
  x * 2^i mod 2^64 depends on the low 64 - i bits of x only, so that OT carries x, counted
  2^i times, and its correction is cut to those 64 - i bits, packed back to back (a "scaled"
  request: 32.5 bits a word on average, not 64). Vectors: the correlation for bit i of Q[k, n] is the column P[:, k] * 2^i, which gives
  shares of P @ Q with k*n*64 OTs.
* From those: Beaver triples (elementwise and matmul: two Gilboa products, one in each
  direction, run together), squares (one product), binary AND triples (bit COTs), B2A bits,
  truncation pairs for power-of-two divisors (64 bit-times-word COTs per element), the
  packed comparison's sign masks (s = s_0 ^ s_1 made arithmetic by 64 bit-product COTs one
  way, its 32 bit pairs' ANDs by one AND product on the pairs' bits: 128 OTs per element in
  all, where CrypTen's adder takes over 1,300 each way), ReLU masks (a sign mask and one COT
  each way carrying r, a and u for the products with the bit u, in a second extension run: the
  ReLU's product with its bit and its gradient's need no triple) and the top-bit truncation's
  wrap-bit tuples (one COT per element).

Each party is OT sender in one extension instance and receiver in the other, so both
directions run at once, and any number of tuples (a whole training step's, batched by
``protocols.tuples.Prefetcher``) costs two messages each way per exchange. A matmul triple
costs k n 64 OTs of m-word correlations for (m x k) @ (k x n) (a vector OLE per element of
the smaller operand): its traffic grows with m k n (260 m k n bytes each way), so large
matmuls belong to the dealer suite.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import secrets
import time
from typing import Any, Callable, Generator, Sequence

import numpy as np
import torch

from protocols.bitpack import pair_products
from protocols.ot_extension import Cot, OtChannel, lockstep
from protocols.parts import UnsupportedTuple, metered
from protocols.registry import register_part
from protocols.tuples import KeyedTripleSource, Prefetcher

log = logging.getLogger("cotrain.ot")

_BIT_SHIFTS = np.arange(64, dtype=np.uint64)
_POWERS = np.uint64(1) << _BIT_SHIFTS


def _bits(values: np.ndarray) -> np.ndarray:
    """(..., ) uint64 to (..., 64) bits, least significant first (little-endian bytes, each
    unpacked from its low bit)."""
    words = np.ascontiguousarray(values, dtype="<u8")
    return np.unpackbits(words.view(np.uint8), bitorder="little").reshape(*values.shape, 64)


def _bit_rows(values: np.ndarray, a: int, b: int) -> np.ndarray:
    """Bits a..b-1 of flat ``values`` read as rows (element, bit): uint8."""
    first, last = a // 64, (b + 63) // 64
    return _bits(values[first:last]).reshape(-1)[a - 64 * first: b - 64 * first]


def _element_rows(rows: np.ndarray, a: int, b: int) -> np.ndarray:
    """Row e % len(rows) of ``rows`` for the elements e of OTs a..b-1 in (element e, bit i) order
    (a scaled request's correlations: one row per element, OT (e, i) counts it 2^i times)."""
    return rows[np.arange(a // 64, (b + 63) // 64) % len(rows)]


def _word_products(mine: int, theirs: int, left: np.ndarray, right: np.ndarray) -> Cot:
    """Gilboa over flat words: I choose with the bits of ``right``; my correlation for the peer's
    bit i of element e is left[e], counted 2^i times."""
    return Cot(mine, theirs, 1, lambda a, b: _bit_rows(right, a, b),
               lambda a, b: _element_rows(left.reshape(-1, 1), a, b), group=64, scaled=True)


Plan = tuple  # (Cot, finish: (received sums, own sums) -> my share)


@dataclasses.dataclass
class Followup:
    """A tuple whose last products need the results of the extension run that made the rest:
    their plans, for a second run, and ``finish`` (those plans' results -> the tuple's shares)."""

    plans: list[Plan]
    finish: Callable[[list[np.ndarray]], list[torch.Tensor]]


class GilboaEngine:
    """Cross products between the two parties' private ring values, from an OtChannel.

    Each product is a *plan* (a COT request and how to finish it); :meth:`run` executes any
    number of plans together. Gilboa: for each bit y_i of the chooser's y, the sender's
    correlation is x * 2^i; the 64 OTs of a product are summed into one word as they arrive.
    """

    def __init__(self, channel: OtChannel) -> None:
        self.channel = channel
        self.leader = channel.rank < channel.peer

    def run(self, plans: Sequence[Plan]) -> list[np.ndarray]:
        return lockstep(self.run_steps(plans))[0]

    def run_steps(self, plans: Sequence[Plan]) -> Generator[None, None, list[np.ndarray]]:
        """:meth:`run` as a protocol run for :func:`protocols.ot_extension.lockstep`."""
        results = yield from self.channel.correlated_steps([cot for cot, _ in plans])
        return [finish(received, own) for (_, finish), (received, own) in zip(plans, results)]

    def plan_matmul(self, left: np.ndarray, right: np.ndarray) -> Plan:
        """Shares of L0 @ R1 + L1 @ R0 (uint64 matrices; party 0 holds L0, R0; party 1 L1, R1).

        OTs in (column j of R, row kk of R, bit) order: I choose with my ``right`` bits; my
        correlation for the peer's bit i of R[kk, j] is my ``left`` column kk times 2^i (m
        words, a scaled request); each group of k * 64 OTs sums to column j of the product.
        """
        m, k = left.shape
        n = right.shape[1]
        right_bits = np.ascontiguousarray(right.T).reshape(-1)
        left_rows = np.ascontiguousarray(left.T)  # (k, m)

        cot = Cot(n * k * 64, n * k * 64, m, lambda a, b: _bit_rows(right_bits, a, b),
                  lambda a, b: _element_rows(left_rows, a, b), group=k * 64, scaled=True)
        return cot, lambda received, own: (received + own).T

    def plan_scaled_rows(self, rows: np.ndarray, values: np.ndarray) -> Plan:
        """Shares of row j of L0 times r1[j] plus row j of L1 times r0[j], for every row j (my
        ``rows`` L: (k, m) words, my ``values`` r: k words): one m-word vector OLE per row."""
        count = rows.shape[0] * 64
        cot = Cot(count, count, rows.shape[1], lambda a, b: _bit_rows(values, a, b),
                  lambda a, b: _element_rows(rows, a, b), group=64, scaled=True)
        return cot, lambda received, own: received + own

    def plan_elementwise(self, left: np.ndarray, right: np.ndarray) -> Plan:
        """Shares of x0*y1 + x1*y0 for flat uint64 vectors (party i holds x_i = left, y_i = right)."""
        count = left.size * 64
        return _word_products(count, count, left, right), lambda received, own: (received + own).reshape(-1)

    def plan_one_way(self, left: np.ndarray, right: np.ndarray) -> Plan:
        """Shares of x0 * y1 only (party 0's ``left``, party 1's ``right``)."""
        count = max(left.size, right.size) * 64
        mine, theirs = (0, count) if self.leader else (count, 0)
        plan = _word_products(mine, theirs, left, right)
        return plan, lambda received, own: (own if self.leader else received).reshape(-1)

    def plan_bits_times_words(self, my_bits: np.ndarray, my_words: np.ndarray) -> Plan:
        """Shares of b0*w1 + b1*w0 where b are single bits (one COT per element each way); w is
        one word per bit, or a row of words per bit ((count, width): one COT carries the row)."""
        count = my_bits.size
        rows = my_words.reshape(count, -1)
        cot = Cot(count, count, rows.shape[1], lambda a, b: my_bits[a:b], lambda a, b: rows[a:b])
        return cot, lambda received, own: (received + own).reshape(my_words.shape)

    def plan_bit_products_balanced(self, bits: np.ndarray, correlations: np.ndarray) -> Plan:
        """Shares of sum_j b0_ej * c1_ej + ... for 64 bits j per element e, where either party
        may choose (the product is symmetric): ``bits`` (count, 64) my bits, ``correlations``
        (count, 64) what the peer's bit (e, j) is to select of mine. Rank 0 chooses for the
        first half of the elements, its peer for the rest: one COT per bit in all (not one each
        way), split evenly. Per element, the 64 products summed into one word."""
        count = bits.shape[0]
        half = (count + 1) // 2
        mine, theirs = (slice(0, half), slice(half, count)) if self.leader else (slice(half, count), slice(0, half))
        my_bits = np.ascontiguousarray(bits[mine]).reshape(-1)
        peer_rows = np.ascontiguousarray(correlations[theirs]).reshape(-1, 1)
        cot = Cot(my_bits.size, peer_rows.shape[0], 1, lambda a, b: my_bits[a:b], lambda a, b: peer_rows[a:b],
                  group=64)

        def finish(received: np.ndarray, own: np.ndarray) -> np.ndarray:
            parts = (received, own) if self.leader else (own, received)
            return np.concatenate([part.reshape(-1) for part in parts])

        return cot, finish

    def plan_bit_product(self, bits: np.ndarray) -> Plan:
        """Shares of b0 * b1 for single bits (0/1 uint64): one COT per element, the peer of
        rank 0 choosing with its bit, rank 0's correlation its own bit."""
        count = bits.size
        mine, theirs = (0, count) if self.leader else (count, 0)
        cot = Cot(mine, theirs, 1, lambda a, b: bits[a:b].astype(np.uint8), lambda a, b: bits.reshape(-1, 1)[a:b])
        return cot, lambda received, own: (own if self.leader else received).reshape(-1)

    def plan_and(self, left: np.ndarray, right: np.ndarray) -> Plan:
        """XOR shares of (x0 & y1) ^ (x1 & y0), bitwise on 64-bit words."""
        count = left.size * 64
        cot = Cot(count, count, 1, lambda a, b: _bit_rows(right, a, b),
                  lambda a, b: _bit_rows(left, a, b).astype(np.uint64)[:, None], group=64, binary=True)
        return cot, lambda received, own: (received ^ own).reshape(-1)


# -- the triple source ---------------------------------------------------------------------------
def random_words(shape: Sequence[int]) -> np.ndarray:
    """Uniform 64-bit words from the CSPRNG."""
    count = int(math.prod(shape))
    return np.frombuffer(secrets.token_bytes(8 * count), dtype=np.uint64).reshape(tuple(shape)).copy()


def _packed_bits(bits: np.ndarray) -> np.ndarray:
    """0/1 bits (uint8, any shape) packed in order, 64 to a little-endian word (the last padded with 0)."""
    packed = np.packbits(bits.reshape(-1), bitorder="little")
    return np.concatenate([packed, np.zeros(-len(packed) % 8, np.uint8)]).view(np.uint64)


def _spread_even(words: np.ndarray, count: int) -> np.ndarray:
    """The first 32 ``count`` bits of ``words`` (as :func:`_packed_bits` packed them), 32 per
    element, at the even bits of one word per element."""
    bits = np.unpackbits(words.view(np.uint8), bitorder="little")[: 32 * count].reshape(count, 32)
    spread = np.zeros((count, 64), np.uint8)
    spread[:, 0::2] = bits
    return np.packbits(spread, axis=1, bitorder="little").view(np.uint64).reshape(-1)


def _random_bits(count: int) -> np.ndarray:
    """``count`` uniform bits (0/1 uint64), one random bit each (not a word masked to one)."""
    packed = np.frombuffer(secrets.token_bytes((count + 7) // 8), dtype=np.uint8)
    return np.unpackbits(packed, bitorder="little")[:count].astype(np.uint64)


def matmul_u64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b over Z_2^64 (torch's int64 matmul wraps)."""
    return (torch.from_numpy(a.view(np.int64)) @ torch.from_numpy(b.view(np.int64))).numpy().view(np.uint64)


# CrypTen's Beaver products: c = op(a, b), bilinear in (a, b)
BILINEAR_OPS = ("mul", "matmul", "conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d")


# A bilinear triple's correlations (operand elements x 64 bits x the outputs one reaches) stream
# through the extension in exchanges of CHUNK_WORDS, so they bound time and traffic (2 GiB
# each way), not memory: CrypTen's test_nn image convolutions need up to 2.4e8 and peak at
# 1.7 GiB per party. What is held at once is the basis and its images (elements x
# (elements + output elements)): 512 MiB.
MAX_BILINEAR_WORDS = 1 << 28
MAX_BASIS_WORDS = 1 << 26


def _apply(op: str, kwargs: dict, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """op(a, b) over Z_2^64 (torch's int64 products wrap)."""
    return getattr(torch, op)(torch.from_numpy(a.view(np.int64)), torch.from_numpy(b.view(np.int64)),
                              **kwargs).numpy().view(np.uint64)


def _plan_bilinear(engine: GilboaEngine, op: str, kwargs: dict, a: np.ndarray, b: np.ndarray) -> tuple[Plan, Any]:
    """A triple of any bilinear ``op`` (convolutions, products of a vector) from one vector OLE per
    basis element: op(a, b) = sum_j b_j op(a, e_j), so with M_i's rows op(a_i, e_j) (local), the
    cross terms op(a_0, b_1) + op(a_1, b_0) are M_0^T b_1 + M_1^T b_0. The basis runs over the
    smaller operand (the sizes are public, so both parties choose alike): its 64 bits per element
    are the OT choices. A row carries only the outputs its basis element can reach (a kernel
    weight reaches one output channel): correlations of structural zeros would cost traffic and
    hashing for nothing."""
    on_right = b.size <= a.size
    small, large = (b, a) if on_right else (a, b)
    product = _apply(op, kwargs, a, b)
    held = small.size * (small.size + product.size)  # the basis and its images

    def images(other: np.ndarray) -> np.ndarray:
        """(basis element, output) of op with ``other`` as the larger operand."""
        basis = np.eye(small.size, dtype=np.uint64).reshape(small.size, *small.shape)
        return np.stack([_apply(op, kwargs, other, unit) if on_right else _apply(op, kwargs, unit, other)
                         for unit in basis]).reshape(small.size, -1)

    # An image entry is one product (a basis element meets one element of the larger operand per
    # output, or none), so one pass over the larger operand's element numbers (1, 2, ...) gives
    # both which outputs a row reaches and which element each holds: half the int64 products.
    source = images(np.arange(1, large.size + 1, dtype=np.uint64).reshape(large.shape)) \
        if held <= MAX_BASIS_WORDS else None
    width = product.size if source is None else max(int(np.count_nonzero(source, axis=1).max()), 1)
    words = small.size * 64 * width  # the correlations
    if words > MAX_BILINEAR_WORDS or held > MAX_BASIS_WORDS:
        raise UnsupportedTuple(f"protocol=ot makes {op} triples of up to {MAX_BILINEAR_WORDS} correlation words "
                               f"and {MAX_BASIS_WORDS} basis words; {tuple(a.shape)} with {tuple(b.shape)} needs "
                               f"{words} and {held} (use protocol=dealer)")
    # each row's reachable outputs first; the rest of its width points at outputs whose image is 0
    outputs = np.argsort(source == 0, axis=1, kind="stable")[:, :width]
    numbered = np.concatenate([np.zeros(1, dtype=np.uint64), large.reshape(-1)])  # element 0 is the 0 unreached
    rows = numbered[np.take_along_axis(source, outputs, axis=1)]
    cot, row_sums = engine.plan_scaled_rows(rows, small.reshape(-1))

    def finish(received: np.ndarray, own: np.ndarray) -> np.ndarray:
        cross = torch.zeros(product.size, dtype=torch.int64)
        cross.index_add_(0, torch.from_numpy(outputs.reshape(-1)),
                         torch.from_numpy(row_sums(received, own).reshape(-1).view(np.int64)))
        return cross.numpy().view(np.uint64)

    return (cot, finish), lambda cross: [ring_tensor(a, a.shape), ring_tensor(b, b.shape),
                                         ring_tensor(product + cross.reshape(product.shape), product.shape)]


def ring_tensor(array: np.ndarray, shape: Sequence[int]) -> torch.Tensor:
    """uint64 words as a ring tensor (int64) of ``shape``, in memory of its own."""
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
        comm = self.comm
        if comm.get_world_size() != 2:
            raise ValueError(f"protocol=ot is a two-party protocol; this session has {comm.get_world_size()} "
                             "parties (use protocol=dealer for more)")
        with metered(self.counters, "offline"):
            self.engine = GilboaEngine(OtChannel(comm, 1 - comm.get_rank()))

    def fetch(self, key: tuple) -> list[torch.Tensor]:
        if self.engine is None:
            raise RuntimeError("the OT triple source was used before the secure session started")
        return self.prefetcher.fetch(key)

    def supports_divisor(self, divisor: int) -> bool:
        return divisor > 0 and divisor & (divisor - 1) == 0

    # -- making tuples -----------------------------------------------------------------------
    def produce(self, keys: list[tuple]) -> list[list[torch.Tensor]]:
        """Every tuple of ``keys`` from one OT extension run, and a second for the products
        that need the first's results (a ReLU mask's r u)."""
        return self._produce_beside(keys, None)[0]

    def _produce_beside(self, keys: list[tuple], companion: Generator | None) -> tuple[list[Any], Any]:
        """:meth:`produce`, with ``companion`` (another protocol run with the peer, e.g. the
        HE products) in lockstep with the first extension run, so that the two share their
        waits for the peer; returns the tuples and the companion's value."""
        start = time.perf_counter()
        out, value = self._run_plans([self._plans(key) for key in keys], companion)
        later = [(index, made) for index, made in enumerate(out) if isinstance(made, Followup)]
        if later:
            finished, _ = self._run_plans([(made.plans, made.finish) for _, made in later])
            for (index, _), made in zip(later, finished):
                out[index] = made
        self.seconds += time.perf_counter() - start
        return out, value

    def _run_plans(self, planned: list[tuple[list[Plan], Any]],
                   companion: Generator | None = None) -> tuple[list[Any], Any]:
        """Each (plans, assemble) of ``planned`` assembled from one extension run of all plans
        (``companion`` in lockstep with it: its value comes second)."""
        with metered(self.counters, "offline"):
            results, *value = lockstep(self.engine.run_steps([plan for plans, _ in planned for plan in plans]),
                                       *([companion] if companion is not None else []))
        out, start_index = [], 0
        for plans, assemble in planned:
            out.append(assemble(results[start_index:start_index + len(plans)]))
            start_index += len(plans)
        return out, (value[0] if value else None)

    def _plans(self, key: tuple) -> tuple[list[Plan], Any]:
        """The OT plans for one tuple, and how to turn their results into this party's shares."""
        if key[0] == "triple" and key[1] == "matmul" and min(len(key[2]), len(key[3])) >= 2 and len(key[3]) > 2:
            return self._plan_batched_matmul(key[2], key[3])
        if key[0] == "signmask":
            return self._plan_sign_mask(key[1])
        if key[0] == "relumask":
            return self._plan_relu_mask(key[1])
        plan, assemble = self._plan(key)
        return [plan], lambda results: assemble(results[0])

    def _plan_batched_matmul(self, size0: tuple, size1: tuple) -> tuple[list[Plan], Any]:
        """A batch of matrix products (both operands batched, with broadcasting): one 2-d
        plan per product of the batch."""
        batch = np.broadcast_shapes(size0[:-2], size1[:-2])
        a, b = random_words(size0), random_words(size1)
        a_full = np.broadcast_to(a, batch + size0[-2:]).reshape(-1, *size0[-2:])
        b_full = np.broadcast_to(b, batch + size1[-2:]).reshape(-1, *size1[-2:])
        pairs = [self._plan_matmul(x.copy(), y.copy()) for x, y in zip(a_full, b_full)]  # broadcast views are read-only

        def assemble(results: list[np.ndarray]) -> list[torch.Tensor]:
            c = np.stack([product(cross) for (_, product), cross in zip(pairs, results)])
            return [ring_tensor(a, size0), ring_tensor(b, size1), ring_tensor(c, batch + (size0[-2], size1[-1]))]

        return [plan for plan, _ in pairs], assemble

    def _plan_sign_mask(self, size: tuple) -> tuple[list[Plan], Any]:
        """A sign mask: s = s_0 ^ s_1 from each party's random word. As an integer s = s_0 + s_1
        - sum_j 2^(j+1) s_0j s_1j: the cross products one COT per bit, one way (either party may
        choose; :meth:`GilboaEngine.plan_bit_products_balanced` splits the elements), give r = -s.
        Its 32 bit pairs' ANDs are the local s_i,hi s_i,lo plus the cross terms of one AND plan
        on the pairs' bits alone, two elements to a word (no OTs on the odd bits' zeros)."""
        count = int(math.prod(size))
        s = random_words((count,))
        bits = _bits(s)
        products = (bits.astype(np.uint64) << _BIT_SHIFTS) * np.uint64(2)  # 2^(j+1) s_ij (0 for j = 63)
        high, low = _packed_bits(bits[:, 1::2]), _packed_bits(bits[:, 0::2])
        plans = [self.engine.plan_bit_products_balanced(bits, products), self.engine.plan_and(high, low)]

        def assemble(results: list[np.ndarray]) -> list[torch.Tensor]:
            cross, cross_and = results
            r = cross - s  # my share of -(s_0 + s_1 - cross products)
            pairs = pair_products(s) ^ _spread_even(cross_and, count)
            return [ring_tensor(r, size), ring_tensor(s, size), ring_tensor(pairs, size)]

        return plans, assemble

    def _plan_relu_mask(self, size: tuple) -> tuple[list[Plan], Any]:
        """A ReLU mask (``relumask``: a sign mask, a uniform bit u as an arithmetic and an XOR
        sharing, r u, a uniform a and a u). With u = u_0 ^ u_1 = u_0 + u_1 - 2 u_0 u_1,
        w u = w_0 u_0 + w_1 u_1 + u_1 w_0 (1 - 2 u_0) + u_0 w_1 (1 - 2 u_1) for w = r and a: the
        cross terms, and 2 u_0 u_1, from one bit-times-row COT per element each way. It needs r's
        shares, so it runs after the sign mask's OTs (a second extension run)."""
        count = int(math.prod(size))
        sign_plans, sign_assemble = self._plan_sign_mask(size)
        u, a = _random_bits(count), random_words((count,))

        def assemble(results: list[np.ndarray]) -> Followup:
            r_share, s_share, pairs = sign_assemble(results)
            r = r_share.numpy().view(np.uint64).reshape(-1)
            flip = np.uint64(1) - np.uint64(2) * u  # 1 - 2 u_i in the ring
            rows = np.stack([r * flip, a * flip, u], axis=1)

            def finish(cross: list[np.ndarray]) -> list[torch.Tensor]:
                (cross,) = cross
                return [r_share, s_share, pairs, ring_tensor(u - cross[:, 2], size), ring_tensor(u, size),
                        ring_tensor(r * u + cross[:, 0], size), ring_tensor(a, size),
                        ring_tensor(a * u + cross[:, 1], size)]

            return Followup([self.engine.plan_bits_times_words(u.astype(np.uint8), rows)], finish)

        return sign_plans, assemble

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
            a, b = random_words(size0), random_words(size1)
            if op == "mul":
                shape = np.broadcast_shapes(size0, size1)
                a_full = np.broadcast_to(a, shape).reshape(-1).copy()
                b_full = np.broadcast_to(b, shape).reshape(-1).copy()
                return engine.plan_elementwise(a_full, b_full), lambda cross: [
                    ring_tensor(a, size0), ring_tensor(b, size1), ring_tensor(a_full * b_full + cross, shape)]
            if op != "matmul" or len(size0) != 2 or len(size1) != 2:
                return _plan_bilinear(engine, op, dict(kwargs), a, b)
            plan, product = self._plan_matmul(a, b)
            return plan, lambda cross: [ring_tensor(a, size0), ring_tensor(b, size1),
                                        ring_tensor(product(cross), (size0[0], size1[1]))]
        if kind == "square":
            size = key[1]
            r = random_words(size).reshape(-1)
            return engine.plan_one_way(r, r), lambda cross: [ring_tensor(r, size),
                                                             ring_tensor(r * r + np.uint64(2) * cross, size)]
        if kind == "binary":
            _, size0, size1 = key
            a, b = random_words(size0), random_words(size1)
            shape = np.broadcast_shapes(size0, size1)
            a_full = np.broadcast_to(a, shape).reshape(-1).copy()
            b_full = np.broadcast_to(b, shape).reshape(-1).copy()
            return engine.plan_and(a_full, b_full), lambda cross: [
                ring_tensor(a, size0), ring_tensor(b, size1), ring_tensor((a_full & b_full) ^ cross, shape)]
        if kind == "b2a":
            size = key[1]
            bits = _random_bits(int(math.prod(size)))
            # b = b0 + b1 - 2 b0 b1; the plan gives shares of b0*b1 + b1*b0
            return engine.plan_bits_times_words(bits.astype(np.uint8), bits), lambda cross: [
                ring_tensor(bits - cross, size), ring_tensor(bits, size)]
        if kind == "trunc":
            _, size, divisor = key
            if not self.supports_divisor(divisor):
                raise ValueError(f"protocol=ot makes truncation pairs for powers of two, not {divisor}")
            count, shift = int(math.prod(size)), divisor.bit_length() - 1
            bits = _random_bits(count * 64)

            def assemble(cross: np.ndarray) -> list[torch.Tensor]:
                shared = (bits - cross).reshape(count, 64)  # arithmetic shares of 64 random bits
                r = (shared * _POWERS[None, :]).sum(axis=1, dtype=np.uint64)
                low = (shared[:, shift:63] * _POWERS[None, : 63 - shift]).sum(axis=1, dtype=np.uint64)
                return [ring_tensor(r, size), ring_tensor(shared[:, 63], size), ring_tensor(low, size)]

            return engine.plan_bits_times_words(bits.astype(np.uint8), bits), assemble
        if kind == "wrapbit":
            size = key[1]
            word = random_words(size).reshape(-1)  # its top bit is this party's private bit
            return engine.plan_bit_product(word >> np.uint64(63)), lambda cross: [ring_tensor(word, size),
                                                                                   ring_tensor(cross, size)]
        if kind == "wrap":
            raise UnsupportedTuple("protocol=ot makes no wrap tuples; use truncation=topbits or pairs "
                                      "(or truncation=local with two parties)")
        raise ValueError(f"unknown tuple kind {kind!r}")

    def describe(self) -> str:
        return "ot (two-party: edwards25519 base OTs, IKNP extension, Gilboa multiplication)"
