"""Four groups of the carry tree joined in one round (``protocols.carry4``): the products
against the exact ANDs, the comparison and the ReLU built on them against the exact sign over
the whole ring (every party in its own thread, carry4 tuples from the real dealer's answers),
and what a dealer's lie in a carry4 tuple does."""

from __future__ import annotations

import threading
from typing import Callable

import pytest
import torch

from protocols.bitpack import pair_products
from protocols.carry4 import COMPONENTS, INPUTS, PRODUCTS, SUBSETS, carry4_products, carry4_values
from protocols.comparison import comparison_tuples, masked_sign_bit, relu_gradient_shares, relu_shares, relu_tuples
from protocols.dealer import SemiHonestMaker, expand
from protocols.prg import CipherGenerator, new_seed
from test_packed_comparison import IdealAnd, _ring_values, xor_all, xor_sharing
from test_relu_mask import ThreadComm, _masks, _values

Lie = Callable[[int, list[torch.Tensor]], None]  # (the tuple's index, party 0's shares), altered in place


def _dealt(keys: list[tuple], parties: int, lie: Lie | None = None) -> list[list[list[torch.Tensor]]]:
    """Each party's shares of the carry4 tuples among ``keys``, from one answer of the
    semi-honest dealer; ``lie`` may alter party 0's (a lying dealer)."""
    keys = [key for key in keys if key[0] == "carry4"]
    maker = SemiHonestMaker(parties)
    answers = maker.deal(keys)
    dealt = [expand(keys, maker.seeds[p], answers[p], p, parties) for p in range(parties)]
    if lie is not None:
        for index, shares in enumerate(dealt[0]):
            lie(index, shares)
    return dealt


def _products4(tuples: list[list[torch.Tensor]], comm, rank: int):
    """The tree's four-group joins for one party, taking its dealt tuples in order."""
    pending = list(tuples)

    def join(inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        shares = pending.pop(0)
        assert shares[0].shape == inputs[0].shape  # the tuple announced is the tuple used
        return carry4_products(inputs, shares, comm, rank)

    return join


def _in_threads(parties: int, party: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=party, args=(rank,)) for rank in range(parties)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)


def _products(words: torch.Tensor, parties: int, lie: Lie | None = None) -> tuple[list[torch.Tensor], int]:
    """The four PRODUCTS of the seven rows of ``words``, XOR-shared and joined in threads."""
    rng, comm = CipherGenerator(new_seed()), ThreadComm(parties)
    shared = [xor_sharing(word, parties, rng) for word in words]
    tuples = _dealt([("carry4", tuple(words[0].shape))], parties, lie)
    results: list = [None] * parties

    def party(rank: int) -> None:
        inputs = [shares[rank] for shares in shared]
        results[rank] = carry4_products(inputs, tuples[rank][0], comm.for_party(rank), rank)

    _in_threads(parties, party)
    return [xor_all([results[p][j] for p in range(parties)]) for j in range(len(PRODUCTS))], comm.rounds


def _exact(words: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for product in PRODUCTS:
        total = words[product[0]]
        for i in product[1:]:
            total = total & words[i]
        out.append(total)
    return out


@pytest.mark.parametrize("parties", [2, 3])
def test_four_inputs_and_in_one_round(parties):
    assert len(SUBSETS) == 22 and COMPONENTS == 29
    words = CipherGenerator(new_seed()).ring((INPUTS, 300))
    words[:, :4] = -1  # every input 1 in some bits, 0 in others
    words[:, 4:8] = 0
    products, rounds = _products(words, parties)
    assert all(torch.equal(got, exact) for got, exact in zip(products, _exact(words)))
    assert rounds == 1


def test_a_lie_in_a_products_whole_and_flips_exactly_the_bits_lied_about():
    """A dealer that XORs e into the AND of all of a product's masks (semi-honest: not
    detected, see SECURITY.md) flips exactly e's bits of that product; the other products
    stay exact. A lie in a smaller subset's AND reaches the products containing it, and
    only in e's bits."""
    words = CipherGenerator(new_seed()).ring((INPUTS, 300))
    exact = _exact(words)
    lie_bits = torch.zeros(300, dtype=torch.long)
    lie_bits[::3] = 0x00F0F0F0F0F0F0F0

    for lied_subset in (PRODUCTS[2], (0, 1)):
        component = INPUTS + SUBSETS.index(lied_subset)

        def lie(index: int, shares: list[torch.Tensor]) -> None:
            shares[component] = shares[component] ^ lie_bits

        products, _ = _products(words, 2, lie)
        for product, got, want in zip(PRODUCTS, products, exact):
            if not set(lied_subset) <= set(product):
                assert torch.equal(got, want)
            elif product == lied_subset:
                assert torch.equal(got ^ want, lie_bits)
            else:
                assert not ((got ^ want) & ~lie_bits).any()


def _sign(values: torch.Tensor, parties: int, lie: Lie | None = None) -> tuple[torch.Tensor, int]:
    """msb(x) by :func:`masked_sign_bit` joining four groups a round: the tree's last AND
    from :class:`IdealAnd`, the joins over :class:`ThreadComm` with the dealer's tuples."""
    rng, gates, comm = CipherGenerator(new_seed()), IdealAnd(parties), ThreadComm(parties)
    r = rng.ring(values.shape)
    negated, pairs = (xor_sharing(word, parties, rng) for word in (-r, pair_products(-r)))
    tuples = _dealt(list(comparison_tuples(tuple(values.shape), True)), parties, lie)
    results: list = [None] * parties

    def party(rank: int) -> None:
        link = comm.for_party(rank)
        results[rank] = masked_sign_bit(values + r, negated[rank], pairs[rank], rank, gates.for_party(rank),
                                        _products4(tuples[rank], link, rank))

    _in_threads(parties, party)
    return xor_all(results), comm.rounds + gates.rounds


@pytest.mark.parametrize("parties", [2, 3])
def test_four_way_carry_tree_is_the_exact_sign(parties):
    values = _ring_values()
    bits, rounds = _sign(values, parties)
    assert torch.equal(bits, (values < 0).long())
    assert rounds == 3  # 32 groups to 8 to 2, then one AND
    keys = comparison_tuples(tuple(values.shape), True)
    assert [key[0] for key in keys] == ["signmask", "carry4", "carry4", "binary", "b2a"]


def test_a_lie_in_a_carry4_tuple_changes_only_the_signs_of_the_elements_lied_about():
    """The first level's tuples pack 8 elements to a word: a lie in the words of even index
    makes wrong signs only among those words' elements."""
    values = _ring_values()
    lied_words = torch.zeros(-(-values.numel() // 8), dtype=torch.long)
    lied_words[::2] = -1
    component = INPUTS + SUBSETS.index(PRODUCTS[2])

    def lie(index: int, shares: list[torch.Tensor]) -> None:
        if index == 0:
            shares[component] = shares[component] ^ lied_words

    bits, _ = _sign(values, 2, lie)
    exact = (values < 0).long()
    lied = (torch.arange(values.numel()) // 8) % 2 == 0
    assert torch.equal(bits[~lied], exact[~lied])
    assert int((bits[lied] != exact[lied]).sum()) > 0


@pytest.mark.parametrize("parties", [2, 3])
def test_four_way_relu_and_its_gradient_are_exact_over_the_ring(parties):
    values = _values()
    grad = CipherGenerator(new_seed()).ring(values.shape)
    rng, gates, comm = CipherGenerator(new_seed()), IdealAnd(parties), ThreadComm(parties)
    masks = _masks(values, parties)
    tuples = _dealt(list(relu_tuples(tuple(values.shape), True)), parties)
    x_shares, g_shares = (additive_sharing(v, parties, rng) for v in (values, grad))
    outputs: list = [None] * parties

    def party(rank: int) -> None:
        link = comm.for_party(rank)
        relu, z = relu_shares(x_shares[rank], masks[rank], link, gates.for_party(rank),
                              _products4(tuples[rank], link, rank))
        outputs[rank] = (relu, relu_gradient_shares(g_shares[rank], z, masks[rank], link))

    _in_threads(parties, party)
    positive = values > 0
    assert torch.equal(sum(o[0] for o in outputs), torch.where(positive, values, 0))
    assert torch.equal(sum(o[1] for o in outputs), torch.where(positive, grad, 0))
    # the opening of -x + r, two joins of four and one AND, the bit's opening; the gradient's
    assert comm.rounds + gates.rounds == 6


def additive_sharing(value: torch.Tensor, parties: int, rng: CipherGenerator) -> list[torch.Tensor]:
    """An additive sharing of ``value``."""
    shares = [rng.ring(value.shape) for _ in range(parties - 1)]
    return [value - sum(shares)] + shares


def test_a_tuples_components_are_its_masks_and_their_subsets_ands():
    masks = CipherGenerator(new_seed()).ring((INPUTS, 5, 3))
    components = carry4_values(masks)
    assert len(components) == COMPONENTS
    for i in range(INPUTS):
        assert torch.equal(components[i], masks[i])
    for subset, component in zip(SUBSETS, components[INPUTS:]):
        expected = masks[subset[0]]
        for i in subset[1:]:
            expected = expected & masks[i]
        assert torch.equal(component, expected), subset
