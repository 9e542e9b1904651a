"""The packed comparison against the exact sign, over the whole ring, with sign masks from the
dealer (3 parties) and from the trusted first party (2)."""

from __future__ import annotations

import pytest
import torch

from protocols import ProtocolConfig
from protocol_sessions import party_values, run_parties


def _ring_values() -> torch.Tensor:
    """Signed ring elements (units of u = 2^-16): zero and one unit either side, the ends of
    the ring, powers of two and their neighbours, and uniform draws of every magnitude."""
    edges = [0, 1, -1, 2, -2, (1 << 63) - 1, -(1 << 63), -(1 << 63) + 1]
    powers = [sign * ((1 << k) + d) for k in range(1, 63) for d in (-1, 0, 1) for sign in (1, -1)]
    generator = torch.Generator().manual_seed(5)
    uniform = torch.randint(-(1 << 62), 1 << 62, (2000,), generator=generator, dtype=torch.long)
    scaled = uniform >> torch.randint(0, 62, (2000,), generator=generator)
    return torch.cat([torch.tensor(edges + powers, dtype=torch.long), uniform, scaled])


def _compare(crypten, rank):
    from crypten.mpc import MPCTensor

    values = _ring_values()
    x = MPCTensor.from_shares(values if rank == 0 else torch.zeros_like(values), precision=16)
    x = x + crypten.cryptensor(torch.zeros(values.shape))  # re-randomise: every party's share is random
    below = (x < 0).get_plain_text()
    features = torch.linspace(-30, 30, 241).reshape(-1, 1)
    relu = crypten.cryptensor(features).relu().get_plain_text()
    # plain values across the process boundary (tensors would travel as shared memory)
    return {"below": below.tolist(), "relu_error": (relu - features.relu()).abs().max().item(),
            **_cached_relu(crypten, features)}


def _cached_relu(crypten, features):
    """ReLU traced, its tuples made ahead by CrypTen's provider cache, then run from the cache."""
    provider = crypten.mpc.get_default_provider()
    encrypted = crypten.cryptensor(features)
    crypten.trace()
    encrypted.relu()
    crypten.trace(False)
    traced = len(provider.request_cache)
    crypten.fill_cache()
    filled = sum(len(tuples) for tuples in provider.tuple_cache.values())
    relu = encrypted.relu().get_plain_text()
    left = sum(len(tuples) for tuples in provider.tuple_cache.values())
    return {"traced": traced, "filled": filled, "left_in_cache": left, "cached_relu_error": (relu - features.relu()).abs().max().item()}


@pytest.mark.slow
@pytest.mark.parametrize("parties, source", [(2, "tfp"), (3, "dealer")])
def test_packed_comparison_is_the_exact_sign(parties, source):
    protocol = ProtocolConfig(name=source, triple_source=source, comparison="packed")
    expected = (_ring_values() < 0).float().tolist()
    for result in party_values(run_parties(_compare, protocol, parties=parties, timeout_s=300), parties):
        assert result["below"] == expected
        # ReLU through the new sign: x times an integer indicator, exact up to the encoding
        assert result["relu_error"] <= 2**-16
        # CrypTen's tuple cache (trace, fill, replay) serves the packed comparison's triples too
        assert result["traced"] > 0 and result["filled"] == result["traced"] and result["left_in_cache"] == 0
        assert result["cached_relu_error"] <= 2**-16
