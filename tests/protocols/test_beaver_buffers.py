"""The elementwise Beaver product's in-place paths give the words the old, fresh-tensor ones gave:
the compiled local pass, triples dealt as one block, draws into a caller's buffer."""

from __future__ import annotations

import pytest
import torch

from protocols import ProtocolConfig, beaver_kernels
from protocols.crypten_hooks import COMPILED_FROM, pair_over
from protocols.dealer import deal_answers, expand
from protocols.prg import READ_AHEAD_BYTES, CipherGenerator, new_seed
from protocols.tfp import same_shape_triple
from protocols.tuples import check_key
from protocol_sessions import party_values, run_parties

SHAPES = [(), (1,), (7,), (3, 333)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("leader", [True, False])
def test_the_compiled_pass_gives_the_torch_products_words(shape, leader):
    """c + eps b + a delta (+ eps delta at party 0) as the addcmul_ passes computed it, with the
    masked shares written over a and b (the pass takes a and b back from x and them)."""
    rng = CipherGenerator(new_seed())
    x, y, a, b, c, epsilon, delta = (rng.ring(shape) for _ in range(7))
    expected = c.clone().addcmul_(epsilon, b)
    if leader:
        expected.addcmul_(epsilon, delta)
    expected.addcmul_(a, delta)
    masked = pair_over(*rng.ring((2, *shape)).unbind(0))
    torch.sub(x, a, out=masked[0])
    torch.sub(y, b, out=masked[1])
    result = beaver_kernels.finish(x, y, masked, torch.stack([epsilon, delta]), c, leader)
    assert result is c and torch.equal(result, expected)


def test_the_opening_is_written_over_a_and_b_only_where_they_are_one_block():
    block = torch.arange(10, dtype=torch.int64)
    a, b = block[:5], block[5:]
    over = pair_over(a, b)
    assert over.shape == (2, 5) and over.data_ptr() == a.data_ptr() and torch.equal(over[1], b)
    for apart in ((b, a), (block[:4], block[5:9]), (torch.arange(5), torch.arange(5)), (block[:6:2], block[6::2])):
        fresh = pair_over(*apart)
        assert fresh.shape == (2, *apart[0].shape) and fresh.data_ptr() not in (apart[0].data_ptr(), block.data_ptr())


@pytest.mark.parametrize("shape", SHAPES)
def test_tfp_triples_of_one_shape_are_the_draws_of_before(shape):
    """Party 1's (a, b, c) and party 0's (a0, b0, c0) are what three common and two local draws
    gave before (c0 = (a0 + a1)(b0 + b1) - c1), a and b in one block, and the streams stand
    where they stood."""
    common_seed, local_seed = new_seed(), new_seed()
    old_common, old_local = CipherGenerator(common_seed), CipherGenerator(local_seed)
    a1, b1, c1 = (old_common.ring(shape) for _ in range(3))
    a0, b0 = old_local.ring(shape), old_local.ring(shape)
    c0 = (a0 + a1) * (b0 + b1) - c1
    untouched = CipherGenerator(local_seed).stream.bytes_drawn  # the torch seed word only
    for rank, expected in ((1, (a1, b1, c1)), (0, (a0, b0, c0))):
        common, local = CipherGenerator(common_seed), CipherGenerator(local_seed)
        dealt = same_shape_triple(common, local, rank, torch.Size(shape))
        assert all(torch.equal(got, want) for got, want in zip(dealt, expected)), rank
        assert pair_over(dealt[0], dealt[1]).data_ptr() == dealt[0].data_ptr()
        assert common.stream.bytes_drawn == old_common.stream.bytes_drawn
        assert local.stream.bytes_drawn == (old_local.stream.bytes_drawn if rank == 0 else untouched)


@pytest.mark.parametrize("count", [0, 1, 2, 3, 1000, READ_AHEAD_BYTES // 8 + 5])
def test_a_fill_is_the_ring_draw_it_replaces(count):
    """fill(out) writes what ring(out.shape) would return, after small reads left keystream drawn
    ahead or not, and leaves the stream where ring leaves it."""
    seed = new_seed()
    by_ring, by_fill = CipherGenerator(seed), CipherGenerator(seed)
    for small in (0, 3, 40):
        if small:
            assert torch.equal(by_ring.ring((small,)), by_fill.ring((small,)))
        out = torch.empty(count, dtype=torch.int64)
        assert by_fill.fill(out) is out and torch.equal(out, by_ring.ring((count,)))
        assert by_fill.stream.bytes_drawn == by_ring.stream.bytes_drawn
    assert torch.equal(by_fill.ring((5,)), by_ring.ring((5,)))


@pytest.mark.parametrize("party", [0, 1])
def test_a_dealt_elementwise_triple_expands_a_and_b_as_one_block(party):
    """Each party's a and b of an elementwise triple come as one block (the opening is written over
    them), and the triple still opens to a b = c."""
    keys = [check_key(k) for k in [["triple", "mul", [4, 6], [4, 6], []], ["triple", "matmul", [4, 6], [6, 3], []]]]
    seeds = [new_seed(), new_seed()]
    answers = deal_answers(keys, seeds, 0, CipherGenerator(new_seed()))
    dealt = [expand(keys, seed, answers[p], p, 2) for p, seed in enumerate(seeds)]
    a, b, _ = dealt[party][0]
    assert pair_over(a, b).data_ptr() == a.data_ptr()
    for k, op in enumerate(("mul", "matmul")):
        a, b, c = (dealt[0][k][j] + dealt[1][k][j] for j in range(3))
        assert torch.equal(getattr(torch, op)(a, b), c)


def _large_products(crypten, rank):
    """Products of integer sharings (precision 0: exact in the ring) of 20,000 elements, over the
    compiled pass, against torch's; and whether a third product still opens right (the first
    two wrote their openings over their triples' a and b)."""
    from crypten.mpc import MPCTensor

    generator = torch.Generator().manual_seed(3)
    exact = []
    for shape in ((COMPILED_FROM + 3,), (2, 10_000), (2, 10_000)):
        values = [torch.randint(-(1 << 63), (1 << 63) - 1, shape, generator=generator) for _ in range(2)]
        x, y = (MPCTensor.from_shares(v if rank == 0 else torch.zeros_like(v), precision=0)
                + crypten.cryptensor(torch.zeros(shape), precision=0) for v in values)
        exact.append(torch.equal((x * y).get_plain_text(), values[0] * values[1]))
    return exact


@pytest.mark.parametrize("source", ["tfp", "dealer"])
def test_large_products_in_a_session_are_exact(source):
    protocol = ProtocolConfig(name=source, triple_source=source, truncation="topbits")
    for exact in party_values(run_parties(_large_products, protocol, parties=2), 2):
        assert exact == [True, True, True]
