"""Secure comparison (``x < 0``), the core of ReLU, sigmoid's sign split and max.

``crypten`` is CrypTen's: convert to a binary sharing (A2B, a log-depth adder of binary
AND triples), take the sign bit and convert it back (B2A with one B2A tuple). ``packed``
opens x + r against a preprocessed sign mask and computes the sign bit alone by a carry
tree over whole words: its first level local (the mask comes with its bit pairs' ANDs),
then the 32 pairs' groups joined four at a time in one round each where the triple source
deals ``carry4`` tuples (``protocols.carry4``: 32 to 8 to 2, then one AND), else two at a
time (five levels of AND gates), and the B2A opening, all packed to whole words on the
wire: about 4 words per compared element where ``crypten`` opens 27 per adder (n - 1
adders for n parties), 5 rounds with the opening of x + r (7 with two-input ANDs). The
part counts each comparison and charges its traffic; a new comparison registers here by name.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import torch

from protocols import crypten_hooks
from protocols.bitpack import (EVEN_BITS, pack_bits, pack_fields, pair_products, reverse_bit_indices, unpack_bits,
                               unpack_fields)
from protocols.carry4 import PRODUCTS, carry4_products
from protocols.parts import ProtocolPart
from protocols.registry import register_part
from protocols.share_tensors import plain, wrapped_like


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
_TOP_BIT = -(1 << 63)  # bit 63 of an int64 word
_LOW_BITS = (1 << 63) - 1
_BELOW_TOP_PAIR = _LOW_BITS ^ (1 << 62)  # the pair product of bits 62 and 63 cleared (s_63 = 0)


AndWords = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def beaver_and_words(x: torch.Tensor, y: torch.Tensor, triple: Sequence[torch.Tensor], comm: Any) -> torch.Tensor:
    """This party's XOR share of x & y for XOR-shared int64 words (a Beaver AND, one round),
    from its shares of a binary triple (a, b, a & b), as CrypTen's Beaver AND computes it
    without its BinarySharedTensor objects: e = x ^ a and d = y ^ b opened in one message, then
    c ^ (e & b) ^ (a & d), and party 0 adds e & d."""
    from torch.distributed import ReduceOp

    a, b, c = triple
    opened = comm.all_reduce(torch.stack([x ^ a, y ^ b]), op=ReduceOp.BXOR)
    result = (b & opened[0]) ^ (a & opened[1]) ^ c
    return result ^ (opened[0] & opened[1]) if comm.get_rank() == 0 else result


def _and_fields(x: torch.Tensor, y: torch.Tensor, width: int, and_gate: AndWords) -> torch.Tensor:
    """x & y for XOR-shared ``width``-bit fields, 64 / width of them to a word on the wire."""
    return unpack_fields(and_gate(pack_fields(x, width), pack_fields(y, width)), width, x.numel())


def carry_out(generate: torch.Tensor, propagate: torch.Tensor, width: int, and_gate: AndWords) -> torch.Tensor:
    """The generate bit of ``width``-bit groups under the prefix operator (G, P) = (G_hi ^
    P_hi G_lo, P_hi P_lo), for XOR-shared generate and propagate bits at the reversed indices
    of :func:`reverse_bit_indices`.

    In that order the pairs the operator joins, bits (2i, 2i + 1), sit at the same place in
    the low and the high half, and the joined groups come out in that order again: each
    level halves the width with shifts and masks, one AND round each, the fields of all
    elements packed to whole words on the wire."""
    while width > 1:
        width //= 2
        low = (1 << width) - 1
        high_g, low_g = (generate >> width) & low, generate & low
        high_p, low_p = (propagate >> width) & low, propagate & low
        if width == 1:  # the last level: G alone
            return high_g ^ _and_fields(high_p, low_g, 1, and_gate)
        both = _and_fields(high_p | (high_p << width), low_g | (low_p << width), 2 * width, and_gate)
        generate, propagate = high_g ^ (both & low), (both >> width) & low
    return generate


# four XOR-shared words (P3, P2, P1, P0, G2, G1, G0 in) -> their carry4 products, one round
Products4 = Callable[[list[torch.Tensor]], list[torch.Tensor]]
_QUARTERS = (0, 2, 1, 3)  # group k of four lies in this quarter of its field (the reversed indices)
# rows of a level's stacked quarters (G0..G3, then P0..P3) in the order carry4_products takes them
_INPUT_ROWS = (7, 6, 5, 4, 2, 1, 0)


@functools.lru_cache(maxsize=None)
def _level_tables(width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(each group's shift within its field, as a column; the input rows), made once per level
    and device: the tree runs every step."""
    shifts = torch.tensor([quarter * width for quarter in _QUARTERS], device=device).unsqueeze(-1)
    return shifts, torch.tensor(_INPUT_ROWS, device=device)


def carry_out_by_fours(generate: torch.Tensor, propagate: torch.Tensor, width: int, and_gate: AndWords,
                       products4: Products4) -> torch.Tensor:
    """:func:`carry_out` with four groups joined per round while a field holds four or more
    (32 to 8 to 2 bits), by :func:`protocols.carry4.carry4_products`, then by ``and_gate``.

    With the indices reversed, groups 4i..4i + 3 sit at the same place in a field's quarters
    0, 2, 1, 3, and the joined groups come out in the low quarter in the same order again."""
    while width >= 4:
        width //= 4
        shifts, rows = _level_tables(width, generate.device)
        # every group of G and of P at once (a torch call each on all of them: per group and
        # per input, as it was, the calls cost more than the few KB they work on)
        quarters = ((torch.stack([generate, propagate]).unsqueeze(1) >> shifts) & ((1 << width) - 1)).flatten(0, 1)
        inputs = list(pack_fields(quarters.index_select(0, rows), width).unbind(0))
        joined = unpack_fields(torch.stack(products4(inputs)), width, generate.numel())
        generate, propagate = quarters[3] ^ joined[0] ^ joined[1] ^ joined[2], joined[3]
    return carry_out(generate, propagate, width, and_gate)


def masked_sign_bit(opened: torch.Tensor, negated_mask: torch.Tensor, mask_pairs: torch.Tensor, rank: int,
                    and_gate: AndWords, products4: Products4 | None = None) -> torch.Tensor:
    """This party's XOR share (0/1) of msb(x) from the opened c = x + r, an XOR sharing of
    the word s = -r and one of its bit pairs' ANDs (:func:`protocols.bitpack.pair_products`).

    x = c + s; msb(x) = c_63 ^ s_63 ^ (the carry into bit 63). Bit 63 is made to pass the
    carry of bits 0..62 through (s_63 = 0, c_63 = 1: g = 0, p = 1), so the carry is the
    whole word's generate bit. The first level, on pairs of bits, is local: with g = c s and
    p = c ^ s, G = c_hi s_hi ^ c_hi c_lo s_lo ^ c_lo (s_hi s_lo) and P = c_hi s_lo ^ c_lo
    s_hi ^ (s_hi s_lo) ^ c_hi c_lo, where s_hi s_lo is the dealt pair product."""
    public, shared, pairs = opened.reshape(-1), negated_mask.reshape(-1), mask_pairs.reshape(-1)
    leader = rank == 0
    top = ((shared ^ public if leader else shared) >> 63) & 1
    shared, pairs, public = shared & _LOW_BITS, pairs & _BELOW_TOP_PAIR, public | _TOP_BIT
    c_hi, c_lo = (public >> 1) & EVEN_BITS, public & EVEN_BITS
    s_hi, s_lo = (shared >> 1) & EVEN_BITS, shared & EVEN_BITS
    generate = (c_hi & s_hi) ^ (c_hi & c_lo & s_lo) ^ (c_lo & pairs)
    propagate = (c_hi & s_lo) ^ (c_lo & s_hi) ^ pairs
    if leader:
        propagate = propagate ^ (c_hi & c_lo)
    # the pairs' groups at the even bits land in the low half, in reversed order (both words
    # at once: a torch call each on the pair)
    generate, propagate = reverse_bit_indices(torch.stack([generate, propagate])).unbind(0)
    if products4 is None:
        carry = carry_out(generate, propagate, 32, and_gate)
    else:
        carry = carry_out_by_fours(generate, propagate, 32, and_gate, products4)
    return (top ^ carry).reshape(opened.shape)


def _tree_gates(size: tuple[int, ...], by_fours: bool) -> list[tuple]:
    """The tuples of the carry tree's rounds for a tensor of ``size``, binary triples and
    (``by_fours``) carry4 tuples: their sizes read off the tree itself, run on zeros."""
    gates: list[tuple] = []

    def record(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gates.append(("binary", tuple(x.size()), tuple(y.size())))
        return torch.zeros_like(x)

    def record4(inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        gates.append(("carry4", tuple(inputs[0].size())))
        return [torch.zeros_like(inputs[0])] * len(PRODUCTS)

    zeros = torch.zeros(math.prod(size), dtype=torch.int64)
    if by_fours:
        carry_out_by_fours(zeros, zeros, 32, record, record4)
    else:
        carry_out(zeros, zeros, 32, record)
    return gates


@functools.lru_cache(maxsize=256)
def comparison_tuples(size: tuple[int, ...], by_fours: bool = False) -> tuple[tuple, ...]:
    """The tuples one packed comparison of a tensor of ``size`` asks for, in order (keys as
    ``protocols.tuples`` names them): its sign mask, the carry tree's tuples and the B2A
    tuple."""
    return (("signmask", size), *_tree_gates(size, by_fours), ("b2a", size))


@functools.lru_cache(maxsize=256)
def relu_tuples(size: tuple[int, ...], by_fours: bool = False) -> tuple[tuple, ...]:
    """The tuples one packed ReLU of a tensor of ``size`` asks for, in order: its ReLU mask
    (a sign mask with the B2A bit u and the products that make x u local) and the carry
    tree's tuples."""
    return (("relumask", size), *_tree_gates(size, by_fours))


def relu_mask_values(r: torch.Tensor, a: torch.Tensor, u: torch.Tensor) -> list[torch.Tensor | None]:
    """A ReLU mask's components (``relumask`` in ``protocols.tuples``) from its uniform r
    and a and its bit u; None in place of r and a."""
    return [None, -r, pair_products(-r), u, u.clone(), r * u, None, a * u]


def open_bits(bits: torch.Tensor, comm: Any) -> torch.Tensor:
    """The XOR-shared 0/1 ``bits`` opened, 64 to a word on the wire."""
    from torch.distributed import ReduceOp

    return unpack_bits(comm.all_reduce(pack_bits(bits.reshape(-1)), op=ReduceOp.BXOR), bits)


def times_opened_bit(share: torch.Tensor, times_u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """This party's share of v b, for b = u ^ z with z opened, from its shares of v and v u:
    b = u + z - 2 u z, so v b = (1 - 2 z) v u + z v, linear in the shares."""
    return (1 - 2 * z) * times_u + z * share


def relu_shares(share: torch.Tensor, mask: Sequence[torch.Tensor], comm: Any, and_gate: AndWords,
                products4: Products4 | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """This party's share of relu(x) = x [x > 0] and the opened z of the bit [x > 0] = u ^ z,
    from its share of x and of a ReLU mask (r, -r as a word, its pair products, u as an
    arithmetic and an XOR sharing, r u, and a second a with a u for the gradient).

    [x > 0] is [-x < 0], the sign of d = -x: c = d + r is opened and the carry tree runs on
    it; then z = bit ^ u is opened (the B2A's one round). x u = -(c - r) u = r u - c u is
    local (c is public), so the product with the bit costs no round of its own. The tree
    joins four groups a round by ``products4`` where it is given."""
    r, negated, pairs, u, u_word, r_u = mask[:6]
    opened = comm.all_reduce(r - share)
    bit = masked_sign_bit(opened, negated, pairs, comm.get_rank(), and_gate, products4)
    z = open_bits(bit ^ (u_word & 1), comm)
    return times_opened_bit(share, r_u - opened * u, z), z


def relu_gradient_shares(grad: torch.Tensor, z: torch.Tensor, mask: Sequence[torch.Tensor], comm: Any) -> torch.Tensor:
    """This party's share of grad [x > 0], the bit as :func:`relu_shares` left it: grad u
    by the mask's pair (a, a u), one opening of grad - a (u is random already: it needs
    no opening of its own)."""
    u, a, a_u = mask[3], mask[6], mask[7]
    opened = comm.all_reduce(grad - a)
    return times_opened_bit(grad, opened * u + a_u, z)


def with_share(like: Any, share: torch.Tensor) -> Any:
    """A new MPCTensor with ``like``'s encoding and ``share`` (``like`` is left as it was)."""
    result = like.shallow_copy()
    result._tensor = like._tensor.shallow_copy()
    result._tensor.share = wrapped_like(share, like._tensor.share)
    return result


@register_part("comparison", "packed")
class PackedComparison(ProtocolPart):
    """x < 0 as the sign bit alone: x + r opened against a sign mask from the triple source,
    then the carry into the top bit by a prefix tree of bit-packed AND gates (four groups
    joined a round where the source deals carry4 tuples), then B2A of the bits, also packed.
    Needs a source with sign masks (dealer, tfp, ot)."""

    suite: Any = None

    def install(self, crypten: Any) -> None:
        source = self.suite.parts["triple_source"]
        crypten_hooks.install_comparison(crypten, self.less_than_zero, self.counters)
        self._relu_here = source.deals_relu_masks()  # else CrypTen's ReLU (through the comparison)
        if self._relu_here:
            crypten_hooks.install_relu(crypten, self.relu, self.relu_gradient, self.counters)
        self._by_fours = source.deals_carry4()
        self._crypten = crypten

    def relu_tuples_for(self, size: tuple[int, ...]) -> tuple[tuple, ...]:
        """The tuples a ReLU of ``size`` asks the source for (none where ReLU is not this part's)."""
        return relu_tuples(size, self._by_fours) if self._relu_here else ()

    def _products4(self, comm: Any, device: Any) -> Products4 | None:
        """The tree's four-group joins from the source's carry4 tuples (None: it deals none)."""
        if not self._by_fours:
            return None
        source, rank = self.suite.parts["triple_source"], comm.get_rank()
        return lambda inputs: carry4_products(inputs, source.carry4_tuple(inputs[0].size(), device=device), comm,
                                              rank)

    def less_than_zero(self, x: Any, crypten_ltz: Callable[[Any], Any]) -> Any:
        from crypten.mpc.ptype import ptype as Ptype

        if x.ptype != Ptype.arithmetic:
            return crypten_ltz(x)
        comm = self._crypten.communicator.get()
        bit = self._sign(plain(x._tensor.share), comm)
        result = x.shallow_copy()
        result._tensor = self._to_arithmetic(bit, comm)
        result.encoder._scale = 1
        return result

    def _sign(self, share: torch.Tensor, comm: Any) -> torch.Tensor:
        """Open x + r against a sign mask from the triple source (r; -r and its bit pairs'
        ANDs as XOR-shared words; sources without them raise UnsupportedTuple) and run the
        tree on it."""
        source = self.suite.parts["triple_source"]
        source.expect(comparison_tuples(tuple(share.size()), self._by_fours))
        r, negated, pairs = source.sign_mask(share.size(), device=share.device)
        return masked_sign_bit(comm.all_reduce(share + plain(r.share)), plain(negated.share), plain(pairs.share),
                               comm.get_rank(), self._and_gate(comm), self._products4(comm, share.device))

    def _and_gate(self, comm: Any) -> AndWords:
        """The tree's two-input ANDs on raw words (:func:`beaver_and_words`) with the source's
        binary triples, counted as its online use as its hook counts CrypTen's ANDs."""
        source = self.suite.parts["triple_source"]
        provider = self._crypten.mpc.get_default_provider()

        def gate(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            triple = provider.generate_binary_triple(x.size(), y.size(), device=x.device)
            return beaver_and_words(x, y, [plain(t.share) for t in triple], comm)

        return crypten_hooks.counted(gate, source.counters, "online")

    def _to_arithmetic(self, bit: torch.Tensor, comm: Any) -> Any:
        """B2A of XOR-shared bits with B2A tuples (r as an arithmetic and an XOR sharing):
        open z = bit ^ r, 64 to a word, then bit = r + z - 2 r z."""
        r_arithmetic, r_binary = self._crypten.mpc.get_default_provider().B2A_rng(bit.size(), device=bit.device)
        z = open_bits(bit ^ (plain(r_binary.share) & 1), comm)  # bit 0 of each share: an XOR sharing of r
        return r_arithmetic * (1 - 2 * z) + z

    def relu(self, x: Any) -> tuple[Any, tuple]:
        """relu(x) and what its gradient needs, by :func:`relu_shares` (sources with ReLU masks)."""
        share = plain(x._tensor.share)
        source = self.suite.parts["triple_source"]
        source.expect(relu_tuples(tuple(share.size()), self._by_fours))
        mask = source.relu_mask(share.size(), device=share.device)
        comm = self._crypten.communicator.get()
        output, z = relu_shares(share, mask, comm, self._and_gate(comm), self._products4(comm, share.device))
        return with_share(x, output), (z, mask)

    def relu_gradient(self, grad: Any, state: tuple) -> Any:
        z, mask = state
        comm = self._crypten.communicator.get()
        return with_share(grad, relu_gradient_shares(plain(grad._tensor.share), z, mask, comm))

    def uninstall(self, crypten: Any) -> None:
        crypten_hooks.uninstall_comparison(crypten)

    def describe(self) -> str:
        return "packed (sign bit by carry-save adders and a bit-packed prefix tree, then B2A)"
