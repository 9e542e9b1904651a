"""Fixed-point truncation: dividing an arithmetic sharing by a public integer.

``local`` is CrypTen's: with two parties each party divides its own share, which is wrong
by about 2^64/d whenever the shares wrap around the ring (probability ~|x|/2^64 per
element, so a few per ten million at realistic magnitudes); with more parties it uses
wrap tuples. ``pairs`` never makes such errors. It uses a preprocessed truncation pair
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
from typing import Any

import torch

from protocols import crypten_hooks
from protocols.parts import ProtocolPart
from protocols.registry import register_part

log = logging.getLogger("cotrain.protocols")
MASK63 = (1 << 63) - 1


def offset_multiple(divisor: int) -> int:
    """K / d: the public offset that makes x' = x + K non-negative, K a multiple of d."""
    return (1 << 62) // divisor


def pair_values(r: torch.Tensor, divisor: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The plaintext truncation pair for a uniform ring tensor ``r``."""
    return r, (r < 0).long(), torch.div(r & MASK63, divisor, rounding_mode="floor")


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
    """CrypTen's truncation, counted: local with 2 parties (rare large errors), wraps with more."""

    def install(self, crypten: Any) -> None:
        crypten_hooks.install_division(crypten, self._divide, self.counters, replaces_beaver_truncate=False)
        self._original = crypten_hooks.original_division(crypten)

    def _divide(self, x: Any, divisor: int) -> Any:
        return self._original(x, divisor)

    def uninstall(self, crypten: Any) -> None:
        crypten_hooks.uninstall_division(crypten)

    def describe(self) -> str:
        return "local (CrypTen's: probabilistic, rare large errors with 2 parties)"


@register_part("truncation", "pairs")
class PairTruncation(ProtocolPart):
    """Truncation with preprocessed pairs from the triple source: one round, at most 1 ulp off."""

    def install(self, crypten: Any) -> None:
        crypten_hooks.install_division(crypten, self._divide, self.counters)

    def uninstall(self, crypten: Any) -> None:
        crypten_hooks.uninstall_division(crypten)

    def _source(self) -> Any:
        return self.suite.parts["triple_source"]

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
