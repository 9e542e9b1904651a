"""The dealer of authenticated preprocessing: its tuples and their layout on the wire.

The dealer is a separate process (rank ``parties`` of the transport), served by the one
dealer loop (``parties.dealer.serve_tuples``) over the one dealer wire protocol
(``protocols.dealer_wire``); a request's items are the tuple specs below. It draws the global
MAC key alpha in [0, 2^64) and hands each party an additive share of it mod 2^128; it
never sees a party's data or any share of one. On request it makes, in clear, each tuple
the program needs and deals every party additive shares of the values and of their MACs
(alpha * value mod 2^128), as seeds and corrections (below):

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
another's preprocessing. Its greeting gives each party its share of alpha, the mode and a
PRG seed of its own (16 bytes, known to that party and the dealer only).

Seeds, not shares: each answer starts with a keystream position (the dealer picks it at
random, so an answer made ahead and never sent wastes nothing), and every party expands
its shares of the answer from its own seed's stream at that position (``draw_tuple``: a
share of every value and of every MAC, in wire order). Of each tuple's values, the uniform
ones (a triple's a and b, a companion a', a mask, the u of ``trunc`` and ``bits``) are
whatever the parties' draws add up to; the others (c, c', the bits) are drawn too. Each
element of a tuple has one correction party (element k of the answer's tuple i: party
(i + k) mod n, so every party corrects its share of every tuple); the dealer sends it its
corrected shares there: for a derived value, the value minus the other parties' draws, and
for every value, the MAC minus the others' MAC draws (``corrected`` says which elements).
At 2 parties that is 2 limbs per element of a uniform value and 4 of a derived one, of 8
when the dealer sent every party full shares. The checks below are on the shared values,
whatever the dealer sent: a correction or a position inconsistent with the seeds is a
wrong value or a wrong MAC, caught like any other lie.

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

from protocols.dealer import POSITION_BITS, batch_stream
from protocols.malicious import bilinear, ring
from protocols.malicious.ring import U128
from protocols.prg import CipherStream, new_seed

FRACTIONAL_BITS = 16
TRUNC_BITS = 64
KINDS = (*bilinear.KINDS, "trunc", "bits", "input", "private", "random")
# per answer, companions and random bits included: making an answer for 2 parties takes the
# dealer about 150 bytes per dealt element (measured: 0.3 GB for 2^21; more with more parties),
# so it refuses more than 2^24 (about 2.5 GB)
MAX_ELEMENTS = 1 << 24
ANSWER_ELEMENTS = 1 << 21  # what the parties ask for per answer unless configured
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


def derived_components(spec: Sequence[Any], checked: bool) -> tuple[int, ...]:
    """Which of ``spec_shapes``' values are not uniform (they follow from the others, so
    their correction parties receive their shares of them; the uniform ones' shares are all
    drawn)."""
    kind = spec[0]
    if kind in bilinear.KINDS:
        return (2, 4) if checked else (2,)
    if kind == "trunc" and not checked:
        return (1, 2)
    if kind in ("trunc", "bits"):
        return (1, 3) if checked else (1,)
    return ()


def corrected(index: int, size: int, rank: int, parties: int) -> slice:
    """The flat elements of an answer's tuple ``index`` (a value of ``size`` elements) whose
    corrected shares party ``rank`` receives: element k goes to party (index + k) mod n."""
    return slice((rank - index) % parties, size, parties)


def tuple_layout(spec: Sequence[Any], index: int, rank: int, parties: int,
                 authenticated: bool) -> list[tuple[tuple[int, ...], slice, bool]]:
    """Per value of an answer's tuple ``index``: its shape, the elements party ``rank``
    corrects, and whether their value shares travel (a derived value) besides the MAC shares."""
    derived = derived_components(spec, authenticated)
    layout = []
    for j, shape in enumerate(spec_shapes(spec, authenticated)):
        size = int(np.prod(shape, dtype=np.int64))
        layout.append((shape, corrected(index, size, rank, parties), j in derived))
    return layout


def answer_limbs(specs: Sequence[Sequence[Any]], rank: int, parties: int, authenticated: bool) -> int:
    """How many uint64 limbs party ``rank``'s answer to ``specs`` carries (see ``Dealer.deal``):
    the keystream position, its corrections, the clear values of the masks it owns."""
    limbs = 2 if authenticated else 1
    total = 1
    for index, spec in enumerate(specs):
        for shape, elements, derived in tuple_layout(spec, index, rank, parties, authenticated):
            count = len(range(*elements.indices(int(np.prod(shape, dtype=np.int64)))))
            total += count * (limbs * derived + 2 * authenticated)
            if clear_owner(spec) == rank:
                total += limbs * int(np.prod(shape, dtype=np.int64))
    return total


def answer_stream(seed: bytes, position: int) -> CipherStream:
    """A party's keystream for the answer at ``position``, the same at the dealer and the party."""
    return batch_stream(seed, position).stream


def draw(stream: CipherStream, shape: tuple[int, ...], limbs: int) -> U128:
    """The next ring elements of ``stream`` (``limbs=1``: values mod 2^64), writable."""
    count = int(np.prod(shape, dtype=np.int64))
    raw = stream.read(8 * limbs * count).view(np.uint64)
    if limbs == 1:
        return U128(raw.reshape(shape), np.zeros(shape, np.uint64))
    return U128(raw[:count].reshape(shape), raw[count:].reshape(shape))


def draw_tuple(stream: CipherStream, spec: Sequence[Any], authenticated: bool) -> list[tuple[U128, U128 | None]]:
    """A party's draws for one tuple, per value its share and its MAC share (the correction
    party's own draws are replaced by its corrections where it has them)."""
    limbs = 2 if authenticated else 1
    return [(draw(stream, shape, limbs), draw(stream, shape, 2) if authenticated else None)
            for shape in spec_shapes(spec, authenticated)]


def expand(specs: Sequence[Sequence[Any]], seed: bytes, buffer: np.ndarray, rank: int, parties: int,
           authenticated: bool) -> list[tuple[list[Any], list[tuple[U128, U128 | None]], list[U128] | None]]:
    """Party ``rank``'s tuples from its seed and its answer (uint64 limbs, ``answer_limbs`` of
    them): per tuple its spec, per value (share, MAC share), and at a mask's owner its clear
    values. Its draws, with its corrections in their place (``tuple_layout``)."""
    position = int(buffer[0])
    if position >= 1 << POSITION_BITS:
        raise DealerProtocolError(f"keystream position {position} is out of range")
    stream = answer_stream(seed, position)
    limbs = 2 if authenticated else 1
    offset = 1

    def take(target: U128, elements: slice, width: int) -> None:
        nonlocal offset
        lo, hi = target.lo.reshape(-1), target.hi.reshape(-1)
        count = len(range(*elements.indices(lo.size)))
        lo[elements] = buffer[offset:offset + count]
        hi[elements] = buffer[offset + count:offset + 2 * count] if width == 2 else 0
        offset += width * count

    def given(shape: tuple[int, ...]) -> U128:
        nonlocal offset
        count = limbs * int(np.prod(shape, dtype=np.int64))
        value = ring.from_wire(buffer[offset:offset + count], shape, limbs)
        offset += count
        return value

    tuples = []
    for index, spec in enumerate(specs):
        values = draw_tuple(stream, spec, authenticated)
        for (share, mac), (_, elements, derived) in zip(values, tuple_layout(spec, index, rank, parties, authenticated)):
            if derived:
                take(share, elements, limbs)
            if mac is not None:
                take(mac, elements, 2)
        clear = [given(share.shape) for share, _ in values] if clear_owner(spec) == rank else None
        tuples.append((spec, values, clear))
    return tuples


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
        raise DealerProtocolError(f"request for {total} elements is over the limit {MAX_ELEMENTS} "
                                  "(protocol.answer_elements bounds what the parties ask for at once)")
    return specs


def share(value: U128, parties: int) -> list[U128]:
    shares = [U128.random(value.shape) for _ in range(parties - 1)]
    last = value
    for piece in shares:
        last = last - piece
    return shares + [last]


class Dealer:
    """Makes tuples in clear and deals them as seeds and corrections: authenticated (with
    MACs, and each tuple with its companion for the parties' checks) or, for the
    semi-honest comparison in ``bench/malicious_bench.py``, plain. The MAC key, the seeds and
    the answers' positions are drawn here, from the OS CSPRNG."""

    kind = "authenticated_dealer"

    def __init__(self, parties: int, authenticated: bool = True) -> None:
        self.parties = parties
        self.authenticated = authenticated
        self.alpha = U128.from_uint64(np.frombuffer(os.urandom(8), dtype=np.uint64).copy())  # in [0, 2^64)
        self.key_shares = share(self.alpha, parties)  # one sharing per run: a resumed run is greeted with it again
        self.seeds = [new_seed() for _ in range(parties)]

    def greeting(self) -> list[torch.Tensor]:
        """Each party's share of alpha, the mode (so parties can refuse a mismatch) and its seed."""
        mode = np.array([int(self.authenticated)], np.uint64)
        return [_as_int64(np.concatenate([ring.to_wire(piece), mode, np.frombuffer(seed, np.uint64)]))
                for piece, seed in zip(self.key_shares, self.seeds)]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What a resumed run needs from this dealer (the run's checkpoints, ``mpc.checkpoint``):
        the parties' shares of the MAC key, a row of (low, high) limbs per party. The MACs in
        the parties' checkpoints hold only under this key, so it is kept, as secret as the
        key itself; the tuples (and the seeds) are dealt afresh."""
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

    def tuple_values(self, spec: Sequence[Any], uniform: list[U128]) -> tuple[list[U128], list[U128]]:
        """The clear values of one tuple (with its companion when checked), given its uniform
        values (what the parties' draws add up to, in order), and what its owner gets in clear
        (input and private masks: the mask and its companion)."""
        kind = spec[0]
        shapes = spec_shapes(spec, self.authenticated)
        if kind in bilinear.KINDS:
            product = bilinear.product(spec)
            a, b = uniform[0], uniform[1]
            values = [a, b, product(a, b)]
            if self.authenticated:
                companion = uniform[2]
                values += [companion, product(companion, b)]
            return values, []
        if kind == "trunc" and not self.authenticated:  # nothing is checked: deal the pair itself
            r = uniform[0]
            low63 = r.lo & np.uint64((1 << 63) - 1)
            return [r, U128.from_uint64(low63 >> np.uint64(FRACTIONAL_BITS)), U128.from_uint64(r.lo >> np.uint64(63))], []
        if kind in ("trunc", "bits"):
            bits = U128.from_uint64(ring.random_bytes(int(np.prod(shapes[1], dtype=np.int64)))
                                    .reshape(shapes[1]).astype(np.uint64) & np.uint64(1))
            values = [uniform[0], bits]
            if self.authenticated:
                companion = uniform[1]
                values += [companion, companion * bits]
            return values, []
        if kind in MASKS:
            owner = clear_owner(spec)
            if not 0 <= owner < self.parties:
                raise DealerProtocolError(f"owner {owner} is not a party")
            return list(uniform), list(uniform)
        if kind == "random":
            return list(uniform), []
        raise DealerProtocolError(f"unknown tuple kind {kind!r}")

    def deal(self, specs: Sequence[Sequence[Any]]) -> list[torch.Tensor]:
        """Each party's wire buffer for ``specs``: the keystream position, then per tuple, per
        value, its corrected value shares (a derived value's) and MAC shares (if
        authenticated) at the elements it corrects (``tuple_layout``); after a tuple's values,
        the clear values its owner gets. Unauthenticated (semi-honest) tuples are values
        mod 2^64: one limb each."""
        position = int.from_bytes(os.urandom(8), "little") >> (64 - POSITION_BITS)
        streams = [answer_stream(seed, position) for seed in self.seeds]
        limbs = 2 if self.authenticated else 1  # semi-honest: values mod 2^64 suffice
        buffers = [np.empty(answer_limbs(specs, rank, self.parties, self.authenticated), np.uint64)
                   for rank in range(self.parties)]
        filled = [1] * self.parties
        for buffer in buffers:
            buffer[0] = position

        def put(rank: int, x: U128, width: int) -> None:
            count, at = x.size, filled[rank]
            buffers[rank][at:at + count] = x.lo.reshape(-1)
            if width == 2:
                buffers[rank][at + count:at + 2 * count] = x.hi.reshape(-1)
            filled[rank] += width * count

        for index, spec in enumerate(specs):
            draws = [draw_tuple(stream, spec, self.authenticated) for stream in streams]
            derived = derived_components(spec, self.authenticated)
            uniform = [_total([d[j][0] for d in draws]) for j in range(len(draws[0])) if j not in derived]
            values, clear = self.tuple_values(spec, uniform)
            for j, value in enumerate(values):
                pieces = [(value, [d[j][0] for d in draws], limbs)] if j in derived else []
                if self.authenticated:
                    pieces.append((value * self.alpha, [d[j][1] for d in draws], 2))
                for total, drawn, width in pieces:
                    flat = total.reshape(-1)
                    for rank in range(self.parties):
                        # where this party corrects: the total minus the other parties' draws
                        elements = corrected(index, value.size, rank, self.parties)
                        put(rank, flat[elements] - _total([piece.reshape(-1)[elements] for other, piece
                                                           in enumerate(drawn) if other != rank]), width)
            owner = clear_owner(spec)
            for value in clear:
                put(owner, value, limbs)
        return [_as_int64(buffer) for buffer in buffers]


def _total(shares: Sequence[U128]) -> U128:
    total = shares[0]
    for piece in shares[1:]:
        total = total + piece
    return total


def _as_int64(limbs: np.ndarray) -> torch.Tensor:
    """uint64 limbs as the int64 buffer the wire carries (the same bits)."""
    return torch.from_numpy(np.ascontiguousarray(limbs, dtype=np.uint64).view(np.int64))
