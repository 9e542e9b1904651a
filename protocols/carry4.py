"""Four groups of the packed comparison's carry tree joined in one round.

The prefix operator on four adjacent groups (3 the most significant) gives G = G3 ^ P3 G2 ^
P3 P2 G1 ^ P3 P2 P1 G0 and P = P3 P2 P1 P0: products of up to four XOR-shared bits, which
two-input AND gates reach in two rounds. Beaver's AND with more inputs does it in one: each
input x_i is opened masked, e_i = x_i ^ a_i, and the product over a set M of inputs is the XOR
over the subsets S of M of (the AND of e_i, i in M \\ S) & a_S, linear in shares of a_S. The
tuple ``carry4`` deals the seven masks a_i (uniform words) and the ANDs a_S of the 22 subsets
S (two inputs or more) that the four products need. Every bit of a word is its own instance,
so the inputs are whole packed words.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Sequence

import torch

# the inputs' order, in a carry4 tuple and in carry4_products
P3, P2, P1, P0, G2, G1, G0 = range(7)
INPUTS = 7
PRODUCTS = ((P3, G2), (P3, P2, G1), (P3, P2, P1, G0), (P3, P2, P1, P0))
# the masks' ANDs a carry4 tuple deals, after the seven masks, in this order
SUBSETS = tuple(sorted({subset for product in PRODUCTS for k in range(2, len(product) + 1)
                        for subset in itertools.combinations(product, k)}, key=lambda s: (len(s), s)))
COMPONENTS = INPUTS + len(SUBSETS)
# Each product over M is the XOR over subsets S of M of (the AND of opened e_i, i in M \ S) &
# a_S; the leader adds every S (S empty: the opened AND alone), the others the non-empty ones.
# Both the ANDs of masks a tuple deals and the products are worked out as gathers from tables,
# a dozen tensor operations where a loop over the subsets took a hundred: rows of up to four
# indices (padded with an all-ones row) ANDed together, and per term of a product which opened
# AND and which dealt a_S it takes (all ones for S empty, all zeros to pad a product to 16 terms).
_ONES_INPUT, _ONES_DEALT, _ZEROS_DEALT = INPUTS, COMPONENTS, COMPONENTS + 1
_TERMS = 16  # the most subsets a product has (2^4)


def _padded_rows(subsets: Sequence[tuple[int, ...]]) -> torch.Tensor:
    return torch.tensor([list(subset) + [_ONES_INPUT] * (4 - len(subset)) for subset in subsets])


def _and_rows(words: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Per row of ``rows``, the AND of those rows of ``words`` (index INPUTS: all ones)."""
    gathered = torch.cat([words, torch.full_like(words[:1], -1)])[rows]
    pairs = gathered[:, :2] & gathered[:, 2:]
    return pairs[:, 0] & pairs[:, 1]


def _dealt_index(subset: tuple[int, ...]) -> int:
    if not subset:
        return _ONES_DEALT
    return subset[0] if len(subset) == 1 else INPUTS + SUBSETS.index(subset)


@functools.lru_cache(maxsize=None)  # built once per device: a comparison uses them thousands of times an epoch
def _product_tables(leader: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the opened ANDs that occur, as padded rows; per term its AND; per term its dealt row)."""
    rests: list[tuple[int, ...]] = [()]
    term_rests, term_dealt = [], []
    for product in PRODUCTS:
        subsets = [subset for k in range(0 if leader else 1, len(product) + 1)
                   for subset in itertools.combinations(product, k)]
        for subset in subsets:
            rest = tuple(i for i in product if i not in subset)
            if rest not in rests:
                rests.append(rest)
            term_rests.append(rests.index(rest))
            term_dealt.append(_dealt_index(subset))
        term_rests += [0] * (_TERMS - len(subsets))
        term_dealt += [_ZEROS_DEALT] * (_TERMS - len(subsets))
    return _padded_rows(rests).to(device), torch.tensor(term_rests, device=device), torch.tensor(term_dealt, device=device)


@functools.lru_cache(maxsize=None)
def _subset_rows(device: torch.device) -> torch.Tensor:
    return _padded_rows(SUBSETS).to(device)


def carry4_stack(masks: torch.Tensor) -> torch.Tensor:
    """A carry4 tuple's components, stacked on the first dimension, from its seven masks (so
    stacked): the masks, then the ANDs of SUBSETS."""
    return torch.cat([masks, _and_rows(masks, _subset_rows(masks.device))])


def carry4_values(masks: torch.Tensor) -> list[torch.Tensor]:
    """:func:`carry4_stack` as a list of components."""
    return list(carry4_stack(masks).unbind(0))


def carry4_products(inputs: Sequence[torch.Tensor], tuple_shares: Sequence[torch.Tensor], comm: Any,
                    rank: int) -> list[torch.Tensor]:
    """This party's XOR shares of the four PRODUCTS of the XOR-shared words ``inputs`` (in the
    order P3, P2, P1, P0, G2, G1, G0, all of one shape), by one opening, from its shares of a
    carry4 tuple of that shape."""
    from torch.distributed import ReduceOp

    ones = torch.full_like(inputs[0], -1)
    dealt = torch.stack([*tuple_shares, ones, torch.zeros_like(ones)])  # its first INPUTS rows: the masks
    opened = comm.all_reduce(torch.stack(list(inputs)) ^ dealt[:INPUTS], op=ReduceOp.BXOR)
    rests, term_rests, term_dealt = _product_tables(rank == 0, opened.device)
    public = _and_rows(opened, rests)
    terms = (public[term_rests] & dealt[term_dealt]).reshape(len(PRODUCTS), _TERMS, *opened.shape[1:])
    while terms.shape[1] > 1:  # XOR each product's 16 terms, halving
        half = terms.shape[1] // 2
        terms = terms[:, :half] ^ terms[:, half:]
    return list(terms[:, 0].unbind(0))
