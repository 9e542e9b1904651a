"""A semi-honest `ot` peer that lies with well-formed messages: bits flipped in its corrections
or its u columns. Nothing refuses such a lie (the suite is semi-honest); what is tested is its
exact consequence: no crash, and the tuples change only in the element the flipped OT belongs
to, by an amount that depends on one of the honest party's random bits and nothing else."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protocols.bitpack import pair_products
from protocols.ot import GilboaEngine, OtTripleSource
from protocols.ot_extension import KAPPA, OtChannel
from test_ot import TamperingComm, _words, outcomes

CORRECTIONS, U_COLUMNS = 3, 1  # party 0's raw messages (TamperingComm): the bodies of one exchange
COUNT = 500  # products in the Gilboa tests
# a scaled (Gilboa) correction for bit i of a word keeps its low 64 - i bits, back to back
KEPT_BITS = [64 - i for i in range(64)]
PREFIX = np.concatenate([[0], np.cumsum(KEPT_BITS)])


def _flip(offsets_bits: list[tuple[int, int]], seen: dict):
    """A lie flipping bit b of byte o for each (o, b) of a message, keeping the original in ``seen``."""
    def lie(tensor: torch.Tensor) -> torch.Tensor:
        seen["original"] = tensor.numpy().copy()
        tensor = tensor.clone()
        for offset, bit in offsets_bits:
            tensor[offset] ^= 1 << bit
        return tensor
    return lie


def _delta(original: np.ndarray, offset: int, bit: int, first: int) -> int:
    """What flipping bit ``bit`` of byte ``offset`` adds to the little-endian integer starting at
    byte ``first`` (mod 2^64): +2^p where that bit was 0, -2^p where it was 1."""
    place = 8 * (offset - first) + bit
    return (-(1 << place) if original[offset] >> bit & 1 else 1 << place) % 2**64


def _signed(value: int) -> int:
    """A ring element (mod 2^64) as the int64 that holds it."""
    value %= 2**64
    return value - 2**64 if value >= 2**63 else value


def _liar(index: int, lie):
    return lambda rank, queues: TamperingComm(rank, queues, index, lie)


def _products(rank, comm):
    """Shares of x0 y1 + x1 y0 (500 Gilboa products); the honest party's base-OT choices s too."""
    x, y = _words(COUNT, 10 + rank), _words(COUNT, 20 + rank)
    engine = GilboaEngine(OtChannel(comm, 1 - rank))
    return engine.run([engine.plan_elementwise(x, y)])[0], engine.channel.sender.choices.copy()


EXACT = _words(COUNT, 10) * _words(COUNT, 21) + _words(COUNT, 11) * _words(COUNT, 20)
Y1 = _words(COUNT, 21)  # the honest party's choice bits for the liar's corrections


@pytest.mark.parametrize("bit, kept, choice", [
    (0, 0, 1), (0, 0, 0), (5, 26, 1), (5, 26, 0), (63, 0, 1), (40, 23, 1), (60, 3, 1), (9, 54, 1),
], ids=lambda v: str(v))
def test_a_flipped_gilboa_correction_shifts_one_product_by_choice_times_the_flip(bit, kept, choice):
    """Bit ``kept`` of the correction of OT (element e, bit i) flipped, by D = +-2^kept: the honest
    receiver's p_c = H(t) - c tau moves by -c D, counted 2^i times, so z0 + z1 = x0 y1 + x1 y0 -
    c D 2^i at e and exact elsewhere (c: bit i of the honest y1[e]). Only the 64 - i bits that
    survive the shift travel, so every flip of one changes the product where c = 1."""
    element = int(np.flatnonzero((Y1 >> np.uint64(bit)) & np.uint64(1) == choice)[3])
    first = element * int(PREFIX[64]) + int(PREFIX[bit])  # the correction's first bit in the message
    at = first + kept
    seen: dict = {}
    liar, honest = outcomes(_products, _liar(CORRECTIONS, _flip([(at // 8, at % 8)], seen)))
    error = (liar[0] + honest[0] - EXACT).reshape(-1)
    expected = np.zeros(COUNT, np.uint64)
    delta = (-(1 << kept) if seen["original"][at // 8] >> (at % 8) & 1 else 1 << kept) % 2**64
    expected[element] = np.uint64((-choice * delta << bit) % 2**64)
    assert np.array_equal(error, expected)
    assert (error[element] != 0) == (choice == 1)


def test_a_flipped_u_bit_garbles_one_product_only_where_the_honest_s_bit_is_one():
    """u column i flipped at OT j: the honest sender's q row j changes in bit i iff its base-OT
    choice s_i is 1; then both of OT j's pads are hashes of another row, and its product (element
    j // 64) comes out wrong; every other product stays exact. (A liar that sees which products
    fail learns bits of s: the selective failure that semi-honest IKNP does not stop.)"""
    width = (COUNT * 64 + 63) // 64 * 8  # bytes per u column
    columns = list(range(0, KAPPA, 16))  # 8 columns, each flipped at an OT of its own element
    elements = [3 + 50 * n for n in range(len(columns))]
    flips = [(column * width + 64 * element // 8, 5) for column, element in zip(columns, elements)]
    liar, honest = outcomes(_products, _liar(U_COLUMNS, _flip(flips, {})))
    wrong = set(np.flatnonzero(liar[0] + honest[0] != EXACT))
    s = honest[1]
    assert wrong == {element for column, element in zip(columns, elements) if s[column]}


def _tuples(keys):
    def party(rank, comm):
        source = OtTripleSource()
        source.engine = GilboaEngine(OtChannel(comm, 1 - rank))
        return source.produce(keys)
    return party


def test_a_flipped_sign_mask_correction_changes_its_element_only():
    """Sign masks (r, s, pair ANDs) of 40 elements. Party 0 sends the corrections of the bit
    products of elements 20-39 (party 1 chooses there, with its bits of s), 64 bits each, then
    those of the pairs' ANDs, one bit per pair (pair i of element e is bit 32 e + i of the AND
    plan). A flipped bit-product correction for bit k of element e moves r0 + r1 off -s by -c D
    there (c: bit k of the honest s1[e]); a flipped AND correction for pair i of element e flips
    bit 2i of the pair ANDs there iff bit 2i of the honest s1[e] is 1. Every other element is
    exact, the first half's bit products included. Several elements of each kind, so both values
    of c occur (but for a chance of 2^-6)."""
    count, half = 40, 20
    words = [(e, (5 * e) % 64, e % 8, e % 7) for e in range(half, count, 3)]  # (e, k, byte in it, bit)
    flips = [(((e - half) * 64 + k) * 8 + byte, bit) for e, k, byte, bit in words]
    ands = [(e, (7 * e) % 32) for e in range(1, count, 5)]  # (e, pair i)
    product_bytes = (count - half) * 64 * 8
    flips += [(product_bytes + (32 * e + i) // 8, (32 * e + i) % 8) for e, i in ands]
    seen: dict = {}
    (liar,), (honest,) = outcomes(_tuples([("signmask", (count,))]), _liar(CORRECTIONS, _flip(flips, seen)))
    (r0, s0, pairs0), (r1, s1, pairs1) = liar, honest
    s = s0 ^ s1
    expected_r, expected_pairs = (-s).clone(), pair_products(s).clone()
    for (e, k, _, _), (offset, bit) in zip(words, flips):
        delta = _delta(seen["original"], offset, bit, ((e - half) * 64 + k) * 8)
        expected_r[e] += _signed(-(int(s1[e]) >> k & 1) * delta)
    for e, i in ands:
        expected_pairs[e] ^= (int(s1[e]) >> (2 * i) & 1) << (2 * i)  # the honest chooser's low bit of pair i
    assert torch.equal(r0 + r1, expected_r)
    assert torch.equal(pairs0 ^ pairs1, expected_pairs)


def test_a_flipped_wrap_bit_correction_changes_its_element_only():
    """Wrap-bit tuples (each party's word, shares of the two top bits' AND): a flipped correction
    of element e moves and0 + and1 off the AND by -c D there (c: the honest party's top bit).
    Eight elements, so both values of c occur (but for a chance of 2^-7)."""
    count = 60
    flips = [(8 * e + e % 8, e % 7) for e in range(1, count, 8)]  # some byte of element e's 8
    seen: dict = {}
    # party 0 only sends in these OTs: its u columns are empty and not sent, so its corrections
    # are its raw message 2
    (liar,), (honest,) = outcomes(_tuples([("wrapbit", (count,))]), _liar(2, _flip(flips, seen)))
    (word0, and0), (word1, and1) = liar, honest
    expected = ((word0 < 0) & (word1 < 0)).long()
    for offset, bit in flips:
        e = offset // 8
        expected[e] += _signed(-int(word1[e] < 0) * _delta(seen["original"], offset, bit, 8 * e))
    assert torch.equal(and0 + and1, expected)
