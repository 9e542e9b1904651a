"""The malicious dealer deals seeds and corrections: in process, every party's expansion of
an answer (``dealer.expand``) adds up to tuples with the dealt relations, the MACs are alpha
times the values, the owners' clear values are the shared masks, and the answers are far
smaller than full shares of every value and MAC."""

from __future__ import annotations

import numpy as np
import pytest

from protocols.malicious import bilinear
from protocols.malicious.dealer import (Dealer, DealerProtocolError, answer_limbs, clear_owner, expand,
                                        spec_shapes)
from protocols.malicious.ring import U128

SPECS = [["triple", [5, 3]], ["matmul", 4, 3, 2], ["bmatmul", 2, 3, 2, 2],
         ["conv", [1, 2, 5, 5], [3, 2, 3, 3], [1, 1], [1, 1], [1, 1], 1], ["trunc", [7]], ["bits", [3, 2], 20],
         ["input", [4], 0], ["private", [2, 3], 1], ["random", [9]], ["triple", [1]]]


def _seed(greeting) -> bytes:
    return greeting.numpy().view(np.uint64)[3:].tobytes()


def _total(pieces: list[U128]) -> U128:
    total = pieces[0]
    for piece in pieces[1:]:
        total = total + piece
    return total


def _low(x: U128) -> np.ndarray:
    return x.lo.copy()


@pytest.mark.parametrize("parties", [2, 3])
@pytest.mark.parametrize("authenticated", [True, False])
def test_every_partys_expansion_adds_up_to_the_dealt_tuples(parties, authenticated):
    specs = SPECS if authenticated else [s for s in SPECS if s[0] != "bits"]
    dealer = Dealer(parties, authenticated)
    seeds = [_seed(greeting) for greeting in dealer.greeting()]
    buffers = dealer.deal(specs)
    parts = []
    for rank, buffer in enumerate(buffers):
        assert buffer.numel() == answer_limbs(specs, rank, parties, authenticated)
        parts.append(expand(specs, seeds[rank], buffer.numpy().view(np.uint64), rank, parties, authenticated))
    same = (lambda x, y: x == y) if authenticated else (lambda x, y: np.array_equal(_low(x), _low(y)))
    for index, spec in enumerate(specs):
        kind = spec[0]
        shares = [party[index][1] for party in parts]
        values = [_total([share[j][0] for share in shares]) for j in range(len(shares[0]))]
        assert [v.shape for v in values] == spec_shapes(spec, authenticated)
        if authenticated:
            for j, value in enumerate(values):
                assert _total([share[j][1] for share in shares]) == value * dealer.alpha, (spec, j)
        if kind in bilinear.KINDS:
            product = bilinear.product(spec)
            assert same(values[2], product(values[0], values[1])), spec
            if authenticated:
                assert values[4] == product(values[3], values[1]), spec
        elif kind in ("trunc", "bits") and authenticated:
            assert set(values[1].to_ints()) <= {0, 1} and values[3] == values[2] * values[1], spec
        elif kind == "trunc":
            r = values[0].lo
            assert np.array_equal(values[1].lo, (r & np.uint64((1 << 63) - 1)) >> np.uint64(16))
            assert np.array_equal(values[2].lo, r >> np.uint64(63))
        owner = clear_owner(spec)
        for rank, party in enumerate(parts):
            clear = party[index][2]
            assert (clear is not None) == (rank == owner), (spec, rank)
            if clear is not None:
                assert all(same(c, v) for c, v in zip(clear, values)), spec


def test_answers_are_under_half_of_full_shares_and_spread_over_the_parties():
    parties = 2
    sizes = [answer_limbs(SPECS, rank, parties, True) for rank in range(parties)]
    # full shares: every party a share of every value and of its MAC, 2 limbs each, and the owners' clear values
    full = sum(4 * parties * int(np.prod(shape)) + 2 * int(np.prod(shape)) * (clear_owner(spec) is not None)
               for spec in SPECS for shape in spec_shapes(spec, True))
    assert sum(sizes) <= full / 2, (sizes, full)
    assert max(sizes) <= 1.2 * min(sizes), sizes


def test_a_position_out_of_range_is_refused():
    dealer = Dealer(2)
    buffer = dealer.deal(SPECS[:1])[0].numpy().view(np.uint64).copy()
    buffer[0] = np.uint64(1 << 63)
    with pytest.raises(DealerProtocolError, match="position"):
        expand(SPECS[:1], _seed(dealer.greeting()[0]), buffer, 0, 2, True)
