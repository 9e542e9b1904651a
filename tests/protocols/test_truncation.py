"""Truncation: ``pairs`` is within 1 ulp everywhere; CrypTen's local method is not."""

from __future__ import annotations

from typing import Sequence

import pytest
import torch

from protocols import ProtocolConfig
from protocols.prg import CipherGenerator, new_seed
from protocols.truncation import finish, opening_mask, pair_values
from protocol_sessions import party_values, run_parties

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
@pytest.mark.parametrize("parties", [2, 3])
def test_pairs_for_any_divisor_and_party_count(divisor, parties):
    rng = CipherGenerator(new_seed())
    x = rng.ring((200_000,)) >> 2  # |x| < 2^61 ... the whole range pairs allow
    x[:4] = torch.tensor([0, -1, (1 << 61) - 1, -(1 << 61)])
    shares, r = _share(x, parties, rng), rng.ring(x.shape)
    result = sum(simulate_pairs(shares, divisor, _pair_shares(r, divisor, parties, rng)))
    error = result - torch.div(x, divisor, rounding_mode="floor")
    assert int(error.min()) >= 0 and int(error.max()) <= 1


def _divide(crypten, rank):
    torch.manual_seed(0)
    values = (torch.rand(50_000, dtype=torch.float64) - 0.5) * 2 ** 7  # float32 decoding resolves 1 ulp here
    x = crypten.cryptensor(values)
    # x * y forces a truncation by 2^16 of a double-scaled product; .div(3) a non-power of 2
    product = (x * crypten.cryptensor(torch.full_like(values, 1.5))).get_plain_text()
    third = x.div(3).get_plain_text()
    counters = crypten.communicator.get()  # noqa: F841 (session is alive)
    return {"product": (product - values * 1.5).abs().max().item(),
            "third": (third - values / 3).abs().max().item()}


@pytest.mark.parametrize("source", ["tfp", "dealer"])
def test_pairs_in_a_session(source):
    protocol = ProtocolConfig(name=source, triple_source=source, truncation="pairs")
    results = party_values(run_parties(_divide, protocol, parties=2), 2)
    ulp = 2 ** -16
    for result in results:
        assert result["product"] <= 3 * ulp and result["third"] <= 3 * ulp
