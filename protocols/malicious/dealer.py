"""The dealer of authenticated preprocessing: its tuples and their layout on the wire.

The dealer is a separate process (rank ``parties`` of the transport), served by the one
dealer loop (``parties.dealer.serve_tuples``) over the one dealer wire protocol
(``protocols.dealer_wire``); a request's items are the tuple specs below. It draws the global
MAC key alpha in [0, 2^64) and hands each party an additive share of it mod 2^128; it
never sees a party's data or any share of one. On request it makes, in clear, each tuple
the program needs and sends every party its additive shares of the values and of their
MACs (alpha * value mod 2^128):

* ``triple``  (shape):       a, b uniform in Z_2^128, c = a*b.
* ``matmul``  (n, d, m):     A (n x d), B (d x m) uniform, C = A @ B.
* ``bmatmul``, ``conv``:      the same for a batched matrix product and a convolution
                             (``bilinear`` describes every such kind and its spec).
* ``trunc``   (shape):       u uniform and 64 random bits per element (shape + (64,)), each an
                             authenticated 0/1 value; the parties build the truncation pair
                             from them (r = sum 2^i b_i + 2^64 u, see ``Engine.trunc``).
                             Unauthenticated (nothing is checked): the pair itself, r uniform,
                             (r mod 2^63) >> 16 and bit 63 of r.
* ``bits``    (shape, l):    the same with l bits (1..64): masks for comparisons
                             (r = sum 2^i b_i + 2^l u, see ``Engine.ltz``).
* ``input``   (shape, owner): r uniform; the owner also gets r in clear (input masks).
* ``private`` (shape, owner): the same, used to reveal a value to ``owner`` only.
* ``random``  (shape):       r uniform in Z_2^128, known to nobody (to verify shares, and
                             times 2^64 to hide the high limb of a value revealed to all).

Every party sends the same request (the program is the same everywhere); the dealer
refuses to answer requests that differ, naming the parties, so a party cannot steer
another's preprocessing. Its greeting gives each party its share of alpha and the mode.

Nothing the dealer deals is trusted (``Engine._check_tuples``, whenever tuples are
authenticated). Every tuple with a structure comes with a companion, and the parties check
every dealt tuple before any value it influenced is revealed or saved:

* triples of every bilinear kind (elementwise, matmul, batched matmul, convolution): the
  companion (a', c' = f(a', b)) shares b; the SPDZ2k sacrifice with a public t drawn after
  dealing requires t*c - c' - f(t*a - a', b) = 0.
* the bits of ``trunc`` and ``bits``: a bit b is the triple (b, b, b) (b*b = b exactly for
  0 and 1, and for no other value mod 2^64), sacrificed the same way with its companion
  (a', c' = a' * b). The structured values (a truncation pair's r, its shifted part and its
  top bit; a comparison mask and its low bits) are made by the parties from checked bits,
  so there is no relation left for the dealer to get wrong.
* ``input`` and ``private`` masks: the companion is one more mask s (shape (1,)) whose
  clear value the owner also gets; the parties open sum chi_k r_k + s (uniform: s hides
  the r_k) and the owner compares it with the same combination of its clear values.

The soundness and cost are in ``Engine._check_tuples``. ``random`` has no structure.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch

from protocols.malicious import bilinear, ring
from protocols.malicious.ring import U128

FRACTIONAL_BITS = 16
TRUNC_BITS = 64
KINDS = (*bilinear.KINDS, "trunc", "bits", "input", "private", "random")
MAX_ELEMENTS = 1 << 27  # per request, companions and truncation bits included (W6 asks for ~47M)
SACRIFICED = (*bilinear.KINDS, "trunc", "bits")  # checked against a companion by the sacrifice
MASKS = ("input", "private")  # checked by their owner against a companion mask
USED = {**{kind: 3 for kind in bilinear.KINDS}, "trunc": 2, "bits": 2, "input": 1, "private": 1, "random": 1}  # before companions


class DealerProtocolError(ValueError):
    """A request to the dealer was malformed."""


def spec_shapes(spec: Sequence[Any], checked: bool = False) -> list[tuple[int, ...]]:
    """The shapes of the authenticated values one tuple carries, in wire order (with
    ``checked``, followed by its companion's)."""
    kind = spec[0]
    if kind in bilinear.KINDS:
        try:
            a, b, c = bilinear.shapes(spec)
        except bilinear.SpecError as error:
            raise DealerProtocolError(str(error)) from None
        return [a, b, c] + ([a, c] if checked else [])
    if kind == "trunc" and not checked:  # the pair itself: r, (r mod 2^63) >> 16, bit 63 of r
        return [tuple(spec[1])] * 3
    if kind in ("trunc", "bits"):
        shape = tuple(spec[1])
        bits = shape + (bit_count(spec),)
        return [shape, bits] + ([bits, bits] if checked else [])
    if kind in MASKS:
        return [tuple(spec[1])] + ([(1,)] if checked else [])
    if kind == "random":
        return [tuple(spec[1])]
    raise DealerProtocolError(f"unknown tuple kind {kind!r}")


def bit_count(spec: Sequence[Any]) -> int:
    """How many random bits per element a ``trunc`` or ``bits`` tuple carries."""
    count = TRUNC_BITS if spec[0] == "trunc" else spec[2]
    if not isinstance(count, int) or not 1 <= count <= 64:
        raise DealerProtocolError(f"bits: 1..64 bits per element, not {count!r}")
    return count


def clear_owner(spec: Sequence[Any]) -> int | None:
    return int(spec[2]) if spec[0] in MASKS else None


def answer_limbs(specs: Sequence[Sequence[Any]], rank: int, authenticated: bool) -> int:
    """How many uint64 limbs party ``rank``'s answer to ``specs`` carries (see ``Dealer.deal``)."""
    limbs = 2 if authenticated else 1
    total = 0
    for spec in specs:
        elements = [int(np.prod(shape, dtype=np.int64)) for shape in spec_shapes(spec, authenticated)]
        per_value = limbs + 2 if authenticated else limbs  # the value's share and its MAC share
        total += per_value * sum(elements)
        if clear_owner(spec) == rank:
            total += limbs * sum(elements)
    return total


def validate(specs: Any, checked: bool) -> list[list[Any]]:
    """``specs`` if they are well formed and, as dealt (``checked``: with companions), within
    the size limit."""
    if not isinstance(specs, list):
        raise DealerProtocolError("a request must be a list of tuple specs")
    total = 0
    for spec in specs:
        if not isinstance(spec, list) or not spec or spec[0] not in KINDS:
            raise DealerProtocolError(f"bad tuple spec {spec!r}")
        for shape in spec_shapes(spec, checked):
            if not all(isinstance(s, int) and 0 <= s for s in shape):
                raise DealerProtocolError(f"bad shape in {spec!r}")
            total += int(np.prod(shape, dtype=np.int64))
    if total > MAX_ELEMENTS:
        raise DealerProtocolError(f"request for {total} elements is over the limit {MAX_ELEMENTS}")
    return specs


def share(value: U128, parties: int) -> list[U128]:
    shares = [U128.random(value.shape) for _ in range(parties - 1)]
    last = value
    for piece in shares:
        last = last - piece
    return shares + [last]


class Dealer:
    """Makes tuples in clear and deals them as shares: authenticated (with MACs, and each
    tuple with its companion for the parties' checks) or, for the semi-honest comparison
    in ``bench/malicious_bench.py``, plain. The MAC key is drawn here, from the OS CSPRNG."""

    kind = "authenticated_dealer"

    def __init__(self, parties: int, authenticated: bool = True) -> None:
        self.parties = parties
        self.authenticated = authenticated
        self.alpha = U128.from_uint64(np.frombuffer(os.urandom(8), dtype=np.uint64).copy())  # in [0, 2^64)
        self.key_shares = share(self.alpha, parties)  # one sharing per run: a resumed run is greeted with it again

    def greeting(self) -> list[torch.Tensor]:
        """Each party's share of alpha, plus the mode, so parties can refuse a mismatch."""
        mode = np.array([int(self.authenticated)], np.uint64)
        return [_as_int64(np.concatenate([ring.to_wire(piece), mode])) for piece in self.key_shares]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What a resumed run needs from this dealer (the run's checkpoints, ``mpc.checkpoint``):
        the parties' shares of the MAC key, a row of (low, high) limbs per party. The MACs in
        the parties' checkpoints hold only under this key, so it is kept, as secret as the
        key itself; the tuples are dealt afresh."""
        return {"mac_key_shares": torch.stack([_as_int64(ring.to_wire(piece)) for piece in self.key_shares])}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Take back a :meth:`state_dict`: the run resumed is greeted with the same key shares."""
        limbs = state.get("mac_key_shares")
        if not torch.is_tensor(limbs) or limbs.dtype != torch.int64 or tuple(limbs.shape) != (self.parties, 2):
            raise ValueError(f"the dealer's saved MAC key is not {self.parties} key shares of 2 int64 limbs")
        pieces = [ring.from_wire(row.numpy().view(np.uint64), (1,)) for row in limbs]
        alpha = pieces[0]
        for piece in pieces[1:]:
            alpha = alpha + piece
        if int(alpha.hi[0]) != 0:  # every key this dealer draws is below 2^64
            raise ValueError("the dealer's saved MAC key shares do not add up to a key of this dealer (below 2^64)")
        self.alpha, self.key_shares = alpha, pieces

    def validate(self, items: Any) -> list[list[Any]]:
        return validate(items, self.authenticated)

    def tuple_values(self, spec: Sequence[Any]) -> tuple[list[U128], list[U128]]:
        """The clear values of one tuple (with its companion when checked), and what its
        owner gets in clear (input and private masks: the mask and its companion)."""
        kind = spec[0]
        shapes = spec_shapes(spec, self.authenticated)
        if kind in bilinear.KINDS:
            product = bilinear.product(spec)
            a, b = U128.random(shapes[0]), U128.random(shapes[1])
            values = [a, b, product(a, b)]
            if self.authenticated:
                companion = U128.random(shapes[0])
                values += [companion, product(companion, b)]
            return values, []
        if kind == "trunc" and not self.authenticated:  # nothing is checked: deal the pair itself
            r = U128.random(shapes[0])
            low63 = r.lo & np.uint64((1 << 63) - 1)
            return [r, U128.from_uint64(low63 >> np.uint64(FRACTIONAL_BITS)), U128.from_uint64(r.lo >> np.uint64(63))], []
        if kind in ("trunc", "bits"):
            bits = U128.from_uint64(ring.random_bytes(int(np.prod(shapes[1], dtype=np.int64)))
                                    .reshape(shapes[1]).astype(np.uint64) & np.uint64(1))
            values = [U128.random(shapes[0]), bits]
            if self.authenticated:
                companion = U128.random(shapes[1])
                values += [companion, companion * bits]
            return values, []
        if kind in MASKS:
            owner = clear_owner(spec)
            if not 0 <= owner < self.parties:
                raise DealerProtocolError(f"owner {owner} is not a party")
            values = [U128.random(shape) for shape in shapes]
            return values, values
        if kind == "random":
            return [U128.random(shapes[0])], []
        raise DealerProtocolError(f"unknown tuple kind {kind!r}")

    def deal(self, specs: Sequence[Sequence[Any]]) -> list[torch.Tensor]:
        """Each party's wire buffer for ``specs``: per value its share, then its MAC share
        (if authenticated); after a tuple's values, the clear values its owner gets.
        Unauthenticated (semi-honest) tuples travel as their low 64 bits only."""
        buffers: list[list[np.ndarray]] = [[] for _ in range(self.parties)]
        limbs = 2 if self.authenticated else 1  # semi-honest: values mod 2^64 suffice
        for spec in specs:
            values, clear = self.tuple_values(spec)
            for value in values:
                for rank, piece in enumerate(share(value, self.parties)):
                    buffers[rank].extend(ring.wire_parts(piece, limbs))
                if self.authenticated:
                    for rank, piece in enumerate(share(value * self.alpha, self.parties)):
                        buffers[rank].extend(ring.wire_parts(piece))
            owner = clear_owner(spec)
            for value in clear:
                buffers[owner].extend(ring.wire_parts(value, limbs))
        # one copy per party into its wire buffer
        return [_as_int64(np.concatenate(parts) if parts else np.zeros(0, np.uint64)) for parts in buffers]



def _as_int64(limbs: np.ndarray) -> torch.Tensor:
    """uint64 limbs as the int64 buffer the wire carries (the same bits)."""
    return torch.from_numpy(np.ascontiguousarray(limbs, dtype=np.uint64).view(np.int64))
