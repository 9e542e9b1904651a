"""The packed comparison against the exact sign, over the whole ring: the word-level carry
tree in one process (every party's side, the AND gates played by an ideal functionality),
and whole sessions with sign masks from the dealer (3 parties) and from the trusted first
party (2)."""

from __future__ import annotations

import threading

import pytest
import torch

from protocols import ProtocolConfig
from protocols.bitpack import pack_fields, pair_products, reverse_bit_indices, unpack_fields
from protocols.comparison import beaver_and_words, masked_sign_bit
from protocols.prg import CipherGenerator, new_seed
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


class IdealAnd:
    """The AND gate as a trusted party would compute it: every party hands in its XOR shares
    of x and y, each gets a fresh XOR sharing of x & y (the parties call in from threads)."""

    def __init__(self, parties: int) -> None:
        self.parties, self.rng = parties, CipherGenerator(new_seed())
        self.barrier = threading.Barrier(parties, action=self._gate)
        self.inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.outputs: list[torch.Tensor] = []
        self.rounds = 0

    def _gate(self) -> None:
        x = xor_all([share_x for share_x, _ in self.inputs.values()])
        y = xor_all([share_y for _, share_y in self.inputs.values()])
        masks = [self.rng.ring(x.shape) for _ in range(self.parties - 1)]
        self.outputs = [xor_all([x & y] + masks)] + masks
        self.rounds += 1

    def for_party(self, rank: int):
        def gate(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            self.inputs[rank] = (x, y)
            self.barrier.wait(timeout=60)  # the last to arrive runs the gate
            return self.outputs[rank]  # replaced only once every party is in the next gate

        return gate


def xor_all(words: list[torch.Tensor]) -> torch.Tensor:
    total = words[0]
    for word in words[1:]:
        total = total ^ word
    return total


def xor_sharing(word: torch.Tensor, parties: int, rng: CipherGenerator) -> list[torch.Tensor]:
    others = [rng.ring(word.shape) for _ in range(parties - 1)]
    return [xor_all([word] + others)] + others


def simulate_sign(values: torch.Tensor, parties: int, pair_lie: torch.Tensor | int = 0) -> tuple[torch.Tensor, int]:
    """msb(x) by :func:`masked_sign_bit`, every party in its own thread: x + r opened, -r
    and its bit pairs' ANDs XOR-shared, the tree's ANDs from :class:`IdealAnd`; the revealed
    bits and the AND rounds. ``pair_lie`` is XORed into the dealt pair word (a lying dealer)."""
    rng, gates = CipherGenerator(new_seed()), IdealAnd(parties)
    r = rng.ring(values.shape)
    negated, pairs = (xor_sharing(word, parties, rng) for word in (-r, pair_products(-r) ^ pair_lie))
    results: list[torch.Tensor | None] = [None] * parties

    def party(rank: int) -> None:
        results[rank] = masked_sign_bit(values + r, negated[rank], pairs[rank], rank, gates.for_party(rank))

    threads = [threading.Thread(target=party, args=(rank,)) for rank in range(parties)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return xor_all(results), gates.rounds


@pytest.mark.parametrize("parties", [2, 3])
def test_word_level_carry_tree_is_the_exact_sign(parties):
    values = _ring_values()
    bits, rounds = simulate_sign(values, parties)
    assert torch.equal(bits, (values < 0).long())
    assert rounds == 5  # 64 bits: six levels, the first local


def test_a_lie_in_the_pair_word_changes_only_the_signs_it_was_told_about():
    """A dealer that lies in a sign mask's pair word (semi-honest: not detected, see
    SECURITY.md) makes wrong signs, but only of the elements it lied about."""
    values = _ring_values()
    lied = torch.arange(values.numel()) % 2 == 0
    lie = lied.long() * (1 << 20)  # the product of bits 21 and 20 flipped
    bits, _ = simulate_sign(values, 2, lie)
    exact = (values < 0).long()
    assert torch.equal(bits[~lied], exact[~lied])
    assert int((bits[lied] != exact[lied]).sum()) > 0


def test_fields_round_trip_and_bit_indices_reverse():
    rng = CipherGenerator(new_seed())
    for width in (1, 2, 4, 8, 16, 32, 64):
        for count in (1, 63, 64, 65, 1000):
            values = rng.ring((count,)) & ((1 << width) - 1) if width < 64 else rng.ring((count,))
            packed = pack_fields(values, width)
            assert packed.numel() == -(-count * width // 64)
            assert torch.equal(unpack_fields(packed, width, count), values)
            # rows are packed each on its own, as one row alone (the carry tree packs 7 at once)
            rows = rng.ring((3, count)) & ((1 << width) - 1) if width < 64 else rng.ring((3, count))
            packed_rows = pack_fields(rows, width)
            assert torch.equal(packed_rows, torch.stack([pack_fields(row, width) for row in rows]))
            assert torch.equal(unpack_fields(packed_rows, width, count), rows)
    words = rng.ring((1000,))
    permuted = reverse_bit_indices(words)
    for position in range(64):
        target = int(f"{position:06b}"[::-1], 2)
        assert torch.equal((permuted >> target) & 1, (words >> position) & 1)
    assert torch.equal(reverse_bit_indices(permuted), words)
    pairs = pair_products(words)
    for position in range(0, 64, 2):
        assert torch.equal((pairs >> position) & 1, (words >> position) & (words >> (position + 1)) & 1)
        assert not ((pairs >> (position + 1)) & 1).any()


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


def _ands(crypten, rank):
    """x & y of XOR-shared random words by beaver_and_words and by CrypTen's own AND, opened."""
    from crypten.mpc.primitives import BinarySharedTensor

    x, y = torch.randint(-(1 << 63), (1 << 63) - 1, (2, 300), generator=torch.Generator().manual_seed(7))
    shared_x, shared_y = BinarySharedTensor(x, src=0), BinarySharedTensor(y, src=0)
    triple = crypten.mpc.get_default_provider().generate_binary_triple(x.size(), y.size())
    raw = beaver_and_words(shared_x.share, shared_y.share, [t.share for t in triple], crypten.communicator.get())
    return {"raw": BinarySharedTensor.from_shares(raw).reveal().tolist(),
            "crypten": (shared_x & shared_y).reveal().tolist(), "exact": (x & y).tolist()}


@pytest.mark.parametrize("parties, source", [(2, "tfp"), (3, "dealer")])
def test_beaver_and_on_raw_words_is_the_exact_and_as_cryptens(parties, source):
    protocol = ProtocolConfig(name=source, triple_source=source, comparison="packed")
    for result in party_values(run_parties(_ands, protocol, parties=parties, timeout_s=300), parties):
        assert result["raw"] == result["exact"] == result["crypten"]
