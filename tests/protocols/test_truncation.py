"""Truncation: ``pairs`` is within 1 ulp everywhere; CrypTen's local method is not."""

from __future__ import annotations

from typing import Sequence

import pytest
import torch

from protocols import ProtocolConfig
from protocols.prg import CipherGenerator, new_seed
from protocols.bitpack import pack_bits, unpack_bits
from protocols import topbit_kernels
from protocols.truncation import (finish, opening_mask, pair_values, top_bit_applies, top_bit_finish, top_bit_share,
                                  wrap_bit_values)
from protocol_sessions import exact_products, party_values, run_parties

ELEMENTS = 10_000_000


def simulate_pairs(shares: Sequence[torch.Tensor], divisor: int, r_shares: Sequence[Sequence[torch.Tensor]],
                   ) -> list[torch.Tensor]:
    """Every party's side of ``pairs`` in one process; ``r_shares[i]`` is party i's
    (r, msb, low_div) shares of the pair."""
    opened = sum(opening_mask(s, rs[0], divisor, i == 0) for i, (s, rs) in enumerate(zip(shares, r_shares)))
    return [finish(opened, rs[1], rs[2], divisor, i == 0) for i, rs in enumerate(r_shares)]


def simulate_local(shares: Sequence[torch.Tensor], divisor: int) -> list[torch.Tensor]:
    """CrypTen's two-party local truncation: each party divides its own share."""
    return [torch.div(s, divisor, rounding_mode="trunc") for s in shares]


def _share(values: torch.Tensor, parties: int, rng: CipherGenerator) -> list[torch.Tensor]:
    shares = [rng.ring(values.shape) for _ in range(parties - 1)]
    return [values - sum(shares)] + shares if shares else [values]


def _pair_shares(r: torch.Tensor, divisor: int, parties: int, rng: CipherGenerator) -> list[list[torch.Tensor]]:
    per_value = [_share(v, parties, rng) for v in pair_values(r, divisor)]
    return [[component[p] for component in per_value] for p in range(parties)]


@pytest.mark.parametrize("divisor", [1, 2, 1 << 16, 1 << 40, 3, 65535, 10 ** 6])
def test_a_pair_holds_r_its_sign_and_its_low_63_bits_divided_exactly(divisor):
    """Powers of two take a shift, the rest a division: the same exact quotient, the ring's
    extremes included."""
    r = torch.cat([CipherGenerator(new_seed()).ring((100_000,)),
                   torch.tensor([0, -1, 1, (1 << 63) - 1, -(1 << 63)], dtype=torch.int64)])
    same, msb, low = pair_values(r, divisor)
    assert same is r and torch.equal(msb, (r < 0).long())
    expected = torch.tensor([(v & ((1 << 63) - 1)) // divisor for v in r.tolist()], dtype=torch.int64)
    assert torch.equal(low, expected)


def test_ten_million_products_within_one_ulp_where_local_truncation_fails():
    """Fixed-point products (scale 2^32, |value| < 2^15) truncated by 2^16, 2 parties."""
    rng, divisor = CipherGenerator(new_seed()), 1 << 16
    x = rng.ring((ELEMENTS,)) >> 16  # |x| < 2^47
    shares = _share(x, 2, rng)
    exact = torch.div(x, divisor, rounding_mode="floor")

    local_error = (sum(simulate_local(shares, divisor)) - exact).abs()
    local_bad = int((local_error > 1).sum())
    assert local_bad > 0, "CrypTen's local truncation should wrap somewhere in 10M elements"
    assert int(local_error.max()) > 1 << 40  # and then it is off by ~2^64 / 2^16

    r = rng.ring((ELEMENTS,))
    error = sum(simulate_pairs(shares, divisor, _pair_shares(r, divisor, 2, rng))) - exact
    assert int(error.min()) >= 0 and int(error.max()) <= 1, "pairs must be floor or floor + 1"
    print(f"\n{ELEMENTS} elements: local truncation {local_bad} errors > 1 ulp "
          f"(max {int(local_error.max())}); pairs 0 (max error {int(error.max())} ulp)")


@pytest.mark.parametrize("divisor", [2, 3, 300, 1 << 16, (1 << 32) + 7])
@pytest.mark.parametrize("parties", [2, 3, 5])
def test_pairs_for_any_divisor_and_party_count(divisor, parties):
    rng = CipherGenerator(new_seed())
    x = rng.ring((200_000,)) >> 2  # |x| < 2^61 ... the whole range pairs allow
    x[:4] = torch.tensor([0, -1, (1 << 61) - 1, -(1 << 61)])
    x[4:50_000] = x[4:50_000] // divisor * divisor  # multiples of d: exact
    shares, r = _share(x, parties, rng), rng.ring(x.shape)
    result = sum(simulate_pairs(shares, divisor, _pair_shares(r, divisor, parties, rng)))
    error = result - torch.div(x, divisor, rounding_mode="floor")
    assert int(error.min()) >= 0 and int(error.max()) <= 1
    assert int(error[:1].abs().sum() + error[4:50_000].abs().sum()) == 0


TOP_BIT_SIDES = {"torch": (top_bit_share, top_bit_finish), "kernels": (topbit_kernels.send, topbit_kernels.finish)}


def simulate_top_bits(shares: Sequence[torch.Tensor], divisor: int, words: Sequence[torch.Tensor],
                      and_shares: Sequence[torch.Tensor], masks: Sequence[torch.Tensor] | None = None,
                      sides: str = "torch") -> list[torch.Tensor]:
    """Both parties' side of ``topbits`` in one process, the masked top bits swapped packed;
    ``words`` are the parties' tuple words, ``and_shares`` their shares of the bits' AND,
    ``masks`` the rerandomizing sharing of zero (none: 0), ``sides`` the implementation."""
    send, finish = TOP_BIT_SIDES[sides]
    masks = masks if masks is not None else [torch.zeros_like(shares[0])] * 2
    sent = [send(s.clone(), masks[i], words[i], i == 0) for i, s in enumerate(shares)]
    return [finish(y, words[i], and_shares[i], bits, sent[1 - i][1], divisor, i == 0)
            for i, (y, bits) in enumerate(sent)]


@pytest.mark.parametrize("sides", sorted(TOP_BIT_SIDES))
@pytest.mark.parametrize("bits", [1, 16, 32, 62])
def test_top_bits_within_one_ulp_over_the_whole_range(bits, sides):
    """Every |x| <= 2^62, 2 parties, torch's operations and the CPU kernels alike: floor(x / 2^k)
    or one more (as pairs: x >= 0 stays >= 0), never a wrap's 2^(64-k)."""
    rng, divisor = CipherGenerator(new_seed()), 1 << bits
    x = rng.ring((1_000_000,)) >> 1  # |x| < 2^62 ... the whole range topbits allow
    x[:5] = torch.tensor([0, -1, (1 << 62) - 1, -(1 << 62), 1 << 47])
    multiples = slice(5, 200_000)  # and multiples of d, 0 among them
    x[multiples] = (x[multiples] >> bits) << bits
    shares = _share(x, 2, rng)
    words = [rng.ring(x.shape), rng.ring(x.shape)]
    and_shares = _share(wrap_bit_values(words)[1], 2, rng)
    mask = rng.ring(x.shape)
    result = simulate_top_bits(shares, divisor, words, and_shares, [mask, mask], sides)
    error = sum(result) - torch.div(x, divisor, rounding_mode="floor")
    assert int(error.min()) >= 0 and int(error.max()) <= 1, "topbits must be floor or floor + 1"
    assert int((error != 1).sum()) > 0 and int((error != 0).sum()) > 0  # both occur: the bound is tight
    # a multiple of d comes out exact, as with CrypTen's local truncation: a product with a
    # public 0 stays 0 (upstream's test_gradients test_dropout tells dropped elements by it)
    assert int(error[:1].abs().sum() + error[multiples].abs().sum()) == 0


def test_top_bit_kernels_give_torchs_shares_word_for_word():
    """Not only the sum: each party's share from the CPU kernels is the one torch's operations
    give, for every divisor 2^k, odd lengths (a partial last word of bits) and a shaped share."""
    rng = CipherGenerator(new_seed())
    for bits in (1, 7, 16, 40, 62):
        for shape in ((1,), (63,), (65,), (3, 333)):
            x = rng.ring(shape) >> 1
            shares, words, masks = _share(x, 2, rng), [rng.ring(shape), rng.ring(shape)], [rng.ring(shape)] * 2
            and_shares = _share(wrap_bit_values(words)[1], 2, rng)
            by_torch, by_kernels = (simulate_top_bits(shares, 1 << bits, words, and_shares, masks, sides)
                                    for sides in ("torch", "kernels"))
            assert all(torch.equal(a, b) for a, b in zip(by_torch, by_kernels)), (bits, shape)


def test_top_bits_only_where_they_are_exact():
    # more parties (their wraps are not one OR), other divisors, and 2^63 (offset too small): pairs
    assert top_bit_applies(2, 1 << 16) and top_bit_applies(2, 2) and top_bit_applies(2, 1 << 62)
    assert not any([top_bit_applies(3, 1 << 16), top_bit_applies(5, 1 << 16), top_bit_applies(2, 3),
                    top_bit_applies(2, 1), top_bit_applies(2, 1 << 63)])


def test_bit_packing_round_trips_any_length():
    rng = CipherGenerator(new_seed())
    for count in (1, 63, 64, 65, 1000):
        bits = (rng.ring((count,)) < 0).long()
        assert pack_bits(bits).numel() == -(-count // 64) and torch.equal(unpack_bits(pack_bits(bits), bits), bits)


@pytest.mark.parametrize("sides", sorted(TOP_BIT_SIDES))
def test_a_wrong_wrap_bit_tuple_moves_the_result_by_a_whole_wrap(sides):
    """A dealer that lies in a wrap-bit tuple's AND (semi-honest: not detected, see
    SECURITY.md) shifts exactly the elements it lied about by 2^(64-k), where honest ones
    stay within 1 ulp: the lie is a wrap's size, never a silent small drift."""
    rng, divisor = CipherGenerator(new_seed()), 1 << 16
    x = rng.ring((100_000,)) >> 17
    shares, words = _share(x, 2, rng), [rng.ring(x.shape), rng.ring(x.shape)]
    honest = wrap_bit_values(words)[1]
    lied = torch.zeros_like(honest)
    lied[::7] = 1
    and_shares = _share(honest ^ lied, 2, rng)
    error = sum(simulate_top_bits(shares, divisor, words, and_shares, sides=sides)) - torch.div(x, divisor, rounding_mode="floor")
    # the lie flips m0 m1 where the parties' masked bits make it count: a whole wrap there
    off = error.abs() > 1
    assert bool(lied[off].eq(1).all()) and int(off.sum()) > 0
    assert bool(((error[off] - 1).abs() == 1 << 48).logical_or((error[off]).abs() == 1 << 48).all())


def _divide(crypten, rank):
    torch.manual_seed(0)
    values = (torch.rand(50_000, dtype=torch.float64) - 0.5) * 2 ** 7  # float32 decoding resolves 1 ulp here
    x = crypten.cryptensor(values)
    # x * y forces a truncation by 2^16 of a double-scaled product; .div(3) a non-power of 2
    product = (x * crypten.cryptensor(torch.full_like(values, 1.5))).get_plain_text()
    third = x.div(3).get_plain_text()
    # a product with a public 0 leaves both shares at 0, not uniform: exactly 0
    zeros = (x * torch.zeros_like(values)).get_plain_text()
    # in-place products and divisions keep the share tensor, as CrypTen's own (its
    # test_arithmetic test_inplace checks the identity)
    sharing = x._tensor.clone()
    share = sharing.share
    sharing.mul_(1.5).div_(3)
    sharing.mul_(crypten.cryptensor(torch.full_like(values, 2.0))._tensor)
    return {"product": (product - values * 1.5).abs().max().item(),
            "exact_products": exact_products(crypten, rank),
            "third": (third - values / 3).abs().max().item(),
            "nonzero_of_zero": int(zeros.ne(0).sum()),
            "in_place": (sharing.share is share, (sharing.get_plain_text() - values).abs().max().item())}


@pytest.mark.parametrize("truncation", ["pairs", "topbits"])
@pytest.mark.parametrize("source", ["tfp", "dealer"])
def test_truncation_in_a_session(source, truncation):
    protocol = ProtocolConfig(name=source, triple_source=source, truncation=truncation)
    results = party_values(run_parties(_divide, protocol, parties=2), 2)
    ulp = 2 ** -16
    for result in results:
        assert result["product"] <= 3 * ulp and result["third"] <= 3 * ulp
        assert result["nonzero_of_zero"] == 0
        assert len(result["exact_products"]) == 3 and all(result["exact_products"].values())
        keeps_share, in_place_error = result["in_place"]
        # encoding (1/2 ulp) times 1.5, a truncation (1 ulp), / 3 and one more, * 2 and one more
        assert keeps_share and in_place_error <= (2 * ((1.5 * 0.5 + 1) / 3 + 1) + 1) * ulp


def _divide_wide_by_cryptens_division(crypten, rank):
    """CrypTen's own division of sharings at |x| < 2^36 and at 2^59 <= |x| < 2^60 by 2^16
    (ring integers, precision 0), and whether the session says it divides wide values exactly."""
    from crypten.mpc import MPCTensor

    from protocols.crypten_hooks import divides_wide_values_exactly

    generator = torch.Generator().manual_seed(1)
    narrow = torch.randint(-(1 << 36), 1 << 36, (50_000,), generator=generator)
    wide = (torch.randint(1 << 59, 1 << 60, (50_000,), generator=generator)
            * (torch.randint(0, 2, (50_000,), generator=generator) * 2 - 1))
    errors = {}
    for name, values in (("narrow", narrow), ("wide", wide)):
        # re-randomised, so that every party's share is uniform
        x = (MPCTensor.from_shares(values if rank == 0 else torch.zeros_like(values), precision=0)
             + crypten.cryptensor(torch.zeros(values.shape), precision=0))
        quotient = x.div(1 << 16).get_plain_text()
        errors[name] = (quotient - torch.div(values, 1 << 16, rounding_mode="floor")).abs()
    return {"exact_claimed": divides_wide_values_exactly(crypten),
            "narrow_max": int(errors["narrow"].max()),
            "wide_wrong": int((errors["wide"] > 3).sum()), "wide_max": int(errors["wide"].max())}


def test_cryptens_three_party_division_is_not_exact_for_wide_values():
    """CrypTen's wrap-based division (3+ parties) leaves out whether x + r wraps: at
    |x| ~ 2^59.5 that happens to about one element in 2^4.5 and the quotient is off by 2^48.
    So the session must not claim exact wide division (the sigmoid then truncates its
    products before adding them up), while values at 2^36 stay within one ulp per party."""
    protocol = ProtocolConfig(name="tfp", triple_source="tfp", truncation="local")
    for result in party_values(run_parties(_divide_wide_by_cryptens_division, protocol, parties=3), 3):
        assert result["exact_claimed"] is False
        assert result["narrow_max"] <= 3
        assert result["wide_wrong"] > 1000 and result["wide_max"] >= 1 << 47, result
