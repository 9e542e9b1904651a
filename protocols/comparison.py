"""Secure comparison (``x < 0``), the core of ReLU, sigmoid's sign split and max.

``crypten`` is CrypTen's: convert to a binary sharing (A2B, a log-depth adder of binary
AND triples), take the sign bit and convert it back (B2A with one B2A tuple). ``packed``
opens x + r against a preprocessed sign mask and computes the sign bit alone, with AND
gates and B2A openings packed 64 bits to a word: about 5 words on the wire per compared
element where ``crypten`` opens 27 per adder (n - 1 adders for n parties). The
part counts each comparison and charges its traffic; a new comparison registers here by name.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from protocols import crypten_hooks
from protocols.bitpack import pack_bits, unpack_bits, unpack_words
from protocols.parts import ProtocolPart
from protocols.registry import register_part


@register_part("comparison", "crypten")
class CryptenComparison(ProtocolPart):
    def install(self, crypten: Any) -> None:
        crypten_hooks.install_comparison(crypten, self.less_than_zero, self.counters)

    def less_than_zero(self, x: Any, crypten_ltz: Callable[[Any], Any]) -> Any:
        return crypten_ltz(x)

    def uninstall(self, crypten: Any) -> None:
        crypten_hooks.uninstall_comparison(crypten)

    def describe(self) -> str:
        return "crypten (A2B adder + sign bit + B2A)"


# -- packed: the sign bit alone, from the parties' shares, with bit-packed AND gates ----------
def _and(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """This party's XOR share of x & y for XOR-shared int64 words (a Beaver AND, one round)."""
    from crypten.mpc.primitives import BinarySharedTensor as BST

    return (BST.from_shares(x) & BST.from_shares(y)).share


def _and_bits(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x & y for XOR-shared 0/1 vectors, 64 bits to a word on the wire."""
    return unpack_bits(_and(pack_bits(x), pack_bits(y)), x)


def _sum_sign(generate: torch.Tensor, propagate: torch.Tensor, rank: int) -> torch.Tensor:
    """msb(a + b) from the XOR-shared bits g = a & b and p = a ^ b, (N, 64) each: a_63 ^ b_63
    ^ (the carry into bit 63), that carry being the generate bit of bits 0..62 under the
    prefix operator (G, P) = (G_hi ^ P_hi G_lo, P_hi P_lo): six levels of 64, 32, ..., 2 bits
    per element, packed 64 to a word (crypten's adder ANDs whole words, 13 per adder)."""
    top = propagate[:, 63].clone()
    # bit 63 passes the carry through: g = 0, p = 1 (a public 1: party 0's share)
    generate[:, 63] = 0
    propagate[:, 63] = 1 if rank == 0 else 0
    while generate.size(1) > 1:
        low_g, high_g = generate[:, 0::2], generate[:, 1::2]
        low_p, high_p = propagate[:, 0::2], propagate[:, 1::2]
        columns = high_p.size(1)
        both = _and_bits(torch.cat([high_p, high_p], 1).reshape(-1), torch.cat([low_g, low_p], 1).reshape(-1))
        both = both.reshape(-1, 2 * columns)
        generate, propagate = high_g ^ both[:, :columns], both[:, columns:]
    return top ^ generate[:, 0]


def masked_sign_bit(opened: torch.Tensor, negated_mask: torch.Tensor, rank: int) -> torch.Tensor:
    """This party's XOR share of msb(x) from the opened c = x + r and an XOR sharing of the
    word -r: x = c + (-r), whose generate and propagate bits need no AND (c is public)."""
    public, shared = unpack_words(opened.reshape(-1)), unpack_words(negated_mask.reshape(-1))
    propagate = shared ^ public if rank == 0 else shared
    return _sum_sign(public & shared, propagate, rank).reshape(opened.shape)


@register_part("comparison", "packed")
class PackedComparison(ProtocolPart):
    """x < 0 as the sign bit alone: x + r opened against a sign mask from the triple source,
    then the carry into the top bit by a prefix tree of bit-packed AND gates, then B2A of
    the bits, also packed. Needs a source with sign masks (dealer, tfp)."""

    suite: Any = None

    def install(self, crypten: Any) -> None:
        crypten_hooks.install_comparison(crypten, self.less_than_zero, self.counters)
        self._crypten = crypten

    def less_than_zero(self, x: Any, crypten_ltz: Callable[[Any], Any]) -> Any:
        from crypten.mpc.ptype import ptype as Ptype

        if x.ptype != Ptype.arithmetic:
            return crypten_ltz(x)
        comm = self._crypten.communicator.get()
        bit = self._sign(x._tensor.share, comm)
        result = x.shallow_copy()
        result._tensor = self._to_arithmetic(bit, comm)
        result.encoder._scale = 1
        return result

    def _sign(self, share: torch.Tensor, comm: Any) -> torch.Tensor:
        """Open x + r against a sign mask from the triple source (r, and -r as an XOR-shared
        word; sources without them raise UnsupportedTuple) and run the tree on it."""
        r, negated = self.suite.parts["triple_source"].sign_mask(share.size(), device=share.device)
        return masked_sign_bit(comm.all_reduce(share + r.share), negated.share, comm.get_rank())

    def _to_arithmetic(self, bit: torch.Tensor, comm: Any) -> Any:
        """B2A of XOR-shared bits with B2A tuples (r as an arithmetic and an XOR sharing):
        open z = bit ^ r, 64 to a word, then bit = r + z - 2 r z."""
        from torch.distributed import ReduceOp

        r_arithmetic, r_binary = self._crypten.mpc.get_default_provider().B2A_rng(bit.size(), device=bit.device)
        masked = (bit ^ (r_binary.share & 1)).reshape(-1)  # bit 0 of each share: an XOR sharing of r
        opened = comm.all_reduce(pack_bits(masked), op=ReduceOp.BXOR)
        z = unpack_bits(opened, bit)
        return r_arithmetic * (1 - 2 * z) + z

    def uninstall(self, crypten: Any) -> None:
        crypten_hooks.uninstall_comparison(crypten)

    def describe(self) -> str:
        return "packed (sign bit by carry-save adders and a bit-packed prefix tree, then B2A)"
