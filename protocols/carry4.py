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
# per product, the subsets S of its inputs whose terms a party adds and the rest M \ S: the
# leader's from the empty set on, the others' from single inputs (the whole product is a_S alone)
TERMS = {leader: tuple(tuple((subset, tuple(i for i in product if i not in subset))
                             for k in range(0 if leader else 1, len(product))
                             for subset in itertools.combinations(product, k))
                       for product in PRODUCTS)
         for leader in (True, False)}


def _and_all(words: Sequence[torch.Tensor]) -> torch.Tensor:
    total = words[0]
    for word in words[1:]:
        total = total & word
    return total


def carry4_values(masks: torch.Tensor) -> list[torch.Tensor]:
    """A carry4 tuple's components from its seven masks (stacked on the first dimension)."""
    return [*masks.unbind(0), *(_and_all([masks[i] for i in subset]) for subset in SUBSETS)]


def carry4_products(inputs: Sequence[torch.Tensor], tuple_shares: Sequence[torch.Tensor], comm: Any,
                    rank: int) -> list[torch.Tensor]:
    """This party's XOR shares of the four PRODUCTS of the XOR-shared words ``inputs`` (in the
    order P3, P2, P1, P0, G2, G1, G0, all of one shape), by one opening, from its shares of a
    carry4 tuple of that shape."""
    from torch.distributed import ReduceOp

    masks = tuple_shares[:INPUTS]
    opened = comm.all_reduce(torch.stack([x ^ a for x, a in zip(inputs, masks)]), op=ReduceOp.BXOR)
    dealt = {**{(i,): masks[i] for i in range(INPUTS)}, **dict(zip(SUBSETS, tuple_shares[INPUTS:]))}
    public: dict[tuple[int, ...], torch.Tensor] = {(i,): opened[i] for i in range(INPUTS)}

    def opened_and(indices: tuple[int, ...]) -> torch.Tensor:
        # the products share their inputs' opened ANDs: each is formed once, from a shorter one
        if indices not in public:
            public[indices] = opened_and(indices[:-1]) & opened[indices[-1]]
        return public[indices]

    results = []
    for product, terms in zip(PRODUCTS, TERMS[rank == 0]):
        # the subset S = the whole product contributes a_S alone; S empty the public AND (leader)
        total = dealt[product].clone()
        for subset, rest in terms:
            public_and = opened_and(rest)
            total ^= public_and & dealt[subset] if subset else public_and
        results.append(total)
    return results
