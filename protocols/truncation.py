"""Fixed-point truncation: dividing an arithmetic sharing by a public integer.

``local`` is CrypTen's: with two parties each party divides its own share, which is wrong
by about 2^64/d whenever the shares wrap around the ring (probability ~|x|/2^64 per
element, so a few per ten million at realistic magnitudes); with more parties it
subtracts a wrap count from wrap tuples that leaves out whether x + r wraps, wrong as
rarely and by as much. ``pairs`` never makes such errors. It uses a preprocessed truncation pair
from the triple source: sharings of a uniform ring element r, of its top bit msb(r) and of
floor((r mod 2^63) / d). With x' = x + K (K a multiple of d near 2^62, so 0 <= x' < 2^63):

1. open c = x' + r mod 2^64 (one round; r is uniform, so c reveals nothing);
2. b = msb(c) XOR msb(r) is linear in the shared msb(r); then x' + (r mod 2^63) equals
   A = (c mod 2^63) + b * 2^63 exactly, and floor(A / d) = q0 + b * (q1 - q0) with public
   q0, q1 computed from c;
3. floor(x' / d) = floor(A/d) - floor((r mod 2^63)/d) - borrow, borrow in {0, 1}; the
   borrow is dropped, so the result is floor(x/d) or floor(x/d) + 1: within 1 ulp for every
   |x| < 2^62.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from protocols import crypten_hooks
from protocols.bitpack import pack_bits, unpack_bits
from protocols.parts import ProtocolPart
from protocols.registry import register_part
from protocols.tuples import wrap_bit_key

log = logging.getLogger("cotrain.protocols")
MASK63 = (1 << 63) - 1


@dataclass(frozen=True)
class TruncationError:
    """How far one truncation lands from the exact quotient x / d: what the derived metric
    tolerances (``mpc.tolerance``) take from a truncation part's ``error_bound``."""

    ulps: float  # the largest error, in units of the last place
    unbiased: bool  # zero-mean (floor, or one more with probability (x mod d) / d)


def offset_multiple(divisor: int) -> int:
    """K / d: the public offset that makes x' = x + K non-negative, K a multiple of d."""
    return (1 << 62) // divisor


def pair_values(r: torch.Tensor, divisor: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The plaintext truncation pair for a uniform ring tensor ``r``. The low 63 bits are
    non-negative, so dividing them by a power of two (every fixed-point scale) is a shift:
    the same quotient at a fraction of int64 division's cost."""
    low = r & MASK63
    if divisor & (divisor - 1) == 0:
        return r, (r < 0).long(), low >> (divisor.bit_length() - 1)
    return r, (r < 0).long(), torch.div(low, divisor, rounding_mode="floor")


def opening_mask(x_share: torch.Tensor, r_share: torch.Tensor, divisor: int, leader: bool) -> torch.Tensor:
    """This party's share of x + K + r, which all parties open."""
    masked = x_share + r_share
    if leader:
        masked += offset_multiple(divisor) * divisor
    return masked


def finish(opened: torch.Tensor, msb_share: torch.Tensor, low_div_share: torch.Tensor, divisor: int,
           leader: bool) -> torch.Tensor:
    """This party's share of floor(x / d) (or +1) from the opened c and its pair shares."""
    c_msb = (opened < 0).long()
    c_low = opened & MASK63
    q0 = torch.div(c_low, divisor, rounding_mode="floor")
    # q1 = floor((c_low + 2^63) / d), computed without leaving int64
    quotient, remainder = divmod(1 << 63, divisor)
    q1 = torch.div(c_low - divisor + remainder, divisor, rounding_mode="floor") + (quotient + 1)
    b_share = msb_share * (1 - 2 * c_msb)
    if leader:
        b_share = b_share + c_msb
    result = b_share * (q1 - q0) - low_div_share
    if leader:
        result = result + q0 - offset_multiple(divisor)
    return result


@register_part("truncation", "local")
class LocalTruncation(ProtocolPart):
    """CrypTen's truncation, counted: local with 2 parties, wraps with more (rare large errors)."""

    def install(self, crypten: Any) -> None:
        crypten_hooks.install_division(crypten, self._divide, self.counters, replaces_beaver_truncate=False)
        self._original = crypten_hooks.original_division(crypten)

    def _divide(self, x: Any, divisor: int) -> Any:
        return self._original(x, divisor)

    def division_tuples(self, size: tuple[int, ...], divisor: int) -> tuple[tuple, ...]:
        """None announced: CrypTen's own division asks for wrap tuples with 3+ parties only."""
        return ()

    def uninstall(self, crypten: Any) -> None:
        crypten_hooks.uninstall_division(crypten)

    def describe(self) -> str:
        return "local (CrypTen's: probabilistic, rare large errors)"

    @classmethod
    def error_bound(cls, parties: int) -> TruncationError:
        """Each party rounds its own share toward zero: up to ``parties`` ulps either way,
        taken as all one way (the rare wrap's 2^64 / d is a fault, not an error bound)."""
        return TruncationError(ulps=float(parties), unbiased=False)


@register_part("truncation", "pairs")
class PairTruncation(ProtocolPart):
    """Truncation with preprocessed pairs from the triple source: one round, at most 1 ulp off."""

    def install(self, crypten: Any) -> None:
        crypten_hooks.install_division(crypten, self._divide, self.counters)

    def uninstall(self, crypten: Any) -> None:
        crypten_hooks.uninstall_division(crypten)

    def _source(self) -> Any:
        return self.suite.parts["triple_source"]

    def division_tuples(self, size: tuple[int, ...], divisor: int) -> tuple[tuple, ...]:
        """The tuples dividing a sharing of ``size`` by ``divisor`` asks the source for (keys
        as ``protocols.tuples`` names them), where it says so; none for a rescaled divisor."""
        if divisor == 1 or not self._source().supports_divisor(divisor):
            return ()
        return (("trunc", size, divisor),)

    def _divide(self, x: Any, divisor: int) -> Any:
        if divisor == 1:
            return x
        source = self._source()
        if not source.supports_divisor(divisor):
            # sources that only make power-of-two pairs: x/d ~ (x * M) >> s, M = round(2^s/d),
            # relative error below 2^-25 on top of the 1-ulp truncation
            shift = 24 + divisor.bit_length()
            multiplier = round((1 << shift) / divisor)
            x.share = x.share * multiplier
            divisor = 1 << shift
        leader = self.comm.get_rank() == 0
        r, msb, low_div = source.truncation_pair(x.share.size(), divisor, device=x.share.device)
        opened = self.comm.all_reduce(opening_mask(x.share, r.share, divisor, leader))
        x.share = finish(opened, msb.share, low_div.share, divisor, leader)
        return x

    def describe(self) -> str:
        return "pairs (preprocessed truncation pairs, exact to 1 ulp)"

    @classmethod
    def error_bound(cls, parties: int) -> TruncationError:
        """floor(x / d), or one more with probability (x mod d) / d (``topbits`` likewise)."""
        return TruncationError(ulps=1.0, unbiased=True)


# -- topbits: two parties, a power-of-two divisor, one round of one bit per element -----------
# With x' = x + 2^62 in [0, 2^63) and the two shares y0, y1 of x' read as unsigned words,
# y0 + y1 = x' + w 2^64 with w = msb(y0) OR msb(y1) (both top bits clear: no wrap; either set:
# the sum is at least 2^63 > x', so it wrapped). Then, for d = 2^k,
#   floor(x'/d) = (y0 >> k) + (y1 >> k) - w 2^(64-k) + carry,   carry in {0, 1},
# and party 0 rounds its quotient up (adds 1 where its low k bits are not all 0) in place of the
# carry: floor(x/d) or one more, as with pairs, and exact for a multiple of d (the low parts then
# sum to 0 or d), as CrypTen's local truncation is for a sharing of 0. w needs the AND of two bits each held by
# one party: with a wrap-bit tuple (a private random bit u_i per party, shares of u0 u1) the
# parties swap p_i = msb(y_i) XOR u_i, which u_i hides, and share w linearly. The shares are first
# rerandomized with a fresh sharing of zero from the stream the two parties share (no traffic):
# shares that are not uniform, such as (x, 0), would round every x that is not a multiple of d
# up; with uniform shares the rounding up lands with probability (x mod d) / d, unbiased.
TOP_BIT_OFFSET = 1 << 62


def top_bit_applies(parties: int, divisor: int) -> bool:
    """Whether ``topbits`` truncates this division itself (else it uses pairs)."""
    return parties == 2 and divisor > 1 and divisor & (divisor - 1) == 0 and divisor <= TOP_BIT_OFFSET


def wrap_bit_values(words: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The plaintext wrap-bit tuple from the two parties' uniform words: each party's private
    bit (its word's top bit) and their AND."""
    bits = [(word < 0).long() for word in words]
    return bits, bits[0] & bits[1]


def top_bit_share(x_share: torch.Tensor, mask: torch.Tensor, own_word: torch.Tensor,
                  leader: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, the bits it sends, packed): y is this party's share of x + 2^62, rerandomized by
    ``mask`` (added at party 0, subtracted at party 1), and it sends msb(y) XOR its private
    bit, ``own_word``'s top bit. Any device; on the CPU ``protocols.topbit_kernels.send``."""
    y = x_share + mask + TOP_BIT_OFFSET if leader else x_share - mask
    return y, pack_bits(((y < 0) ^ (own_word < 0)).long().reshape(-1))


def top_bit_finish(y: torch.Tensor, own_word: torch.Tensor, and_share: torch.Tensor, sent: torch.Tensor,
                   received: torch.Tensor, divisor: int, leader: bool) -> torch.Tensor:
    """This party's share of floor(x / d) (or one more) once the masked top bits (packed) are
    swapped. Any device; on the CPU ``protocols.topbit_kernels.finish``.

    With m_i = p_i + (1 - 2 p_i) u_i: m0 m1 = p0 p1 + p0 (1-2p1) u1 + p1 (1-2p0) u0
    + (1-2p0)(1-2p1) u0 u1, every term linear in one party's u or in the shared u0 u1."""
    k = divisor.bit_length() - 1
    sent, received = unpack_bits(sent, y), unpack_bits(received, y)
    own_bit, top = (own_word < 0).long(), (y < 0).long()
    both_signs = (1 - 2 * sent) * (1 - 2 * received)
    wrap = top - received * (1 - 2 * sent) * own_bit - both_signs * and_share
    if leader:
        wrap = wrap - sent * received
    high = (y >> k) & ((1 << (64 - k)) - 1)  # the unsigned word's quotient
    result = high - (wrap << (64 - k))
    if leader:  # rounded up: floor or one more, as pairs (so x >= 0 never truncates below 0)
        result = result - (TOP_BIT_OFFSET >> k) + (y & (divisor - 1)).ne(0).long()
    return result


@register_part("truncation", "topbits")
class TopBitTruncation(PairTruncation):
    """Two parties and a divisor 2^k: the wrap of the shares from their top bits, one round of
    one bit per element each way (the Beaver product's opening stays the only full-word
    round); more parties, other divisors or a source without wrap-bit tuples (ot): pairs."""

    def install(self, crypten: Any) -> None:
        super().install(crypten)
        from protocols import topbit_kernels

        topbit_kernels.warm_up()
        self._kernels = topbit_kernels
        self._generators = crypten.generators

    def _applies(self, divisor: int) -> bool:
        return top_bit_applies(self.comm.get_world_size(), divisor) and self._source().deals_wrap_bits()

    def division_tuples(self, size: tuple[int, ...], divisor: int) -> tuple[tuple, ...]:
        return ((wrap_bit_key(size, divisor.bit_length() - 1),) if self._applies(divisor)
                else super().division_tuples(size, divisor))

    def _divide(self, x: Any, divisor: int) -> Any:
        if not self._applies(divisor):
            return super()._divide(x, divisor)
        comm = self.comm
        from torch.distributed import ReduceOp

        rank = comm.get_rank()
        common = self._generators["next" if rank == 0 else "prev"][torch.device("cpu")]
        # the AND's shares matter only mod 2^k (the finish shifts the wrap left by 64 - k)
        own_word, and_share = self._source().wrap_bit_tuple(x.share.size(), device=x.share.device,
                                                            bits=divisor.bit_length() - 1)
        mask = common.ring(x.share.size(), x.share.device)
        # on the CPU the kernels write y, then the result, over the share (a division is in
        # place, as CrypTen's own); elsewhere torch's operations make new tensors
        cpu = x.share.device.type == "cpu"
        share = x.share.contiguous() if cpu else x.share
        send, finish = (self._kernels.send, self._kernels.finish) if cpu else (top_bit_share, top_bit_finish)
        y, sent = send(share, mask, own_word, rank == 0)
        slots = torch.zeros(2, sent.numel(), dtype=torch.int64, device=sent.device)
        slots[rank] = sent
        swapped = comm.all_reduce(slots, op=ReduceOp.BXOR)
        x.share = finish(y, own_word, and_share, sent, swapped[1 - rank], divisor, rank == 0)
        return x

    def describe(self) -> str:
        return "topbits (2 parties, divisor 2^k: the shares' wrap from their top bits, 1 bit per element; else pairs)"
