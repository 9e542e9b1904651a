"""The trusted first party's two-party dealing from the stream parties 0 and 1 share
(protocols.tfp.two_party_products): every tuple it deals is exact in the ring, party 1's
shares are the stream's next draws (so party 0, which holds the same stream, sees them, as
it sees every tuple), and shapes it does not deal itself go to CrypTen's dealing."""

from __future__ import annotations

import torch

from protocols import ProtocolConfig
from protocols.carry4 import COMPONENTS, INPUTS, carry4_stack
from protocols.comparison import relu_mask_values
from protocols.tfp import TrustedFirstParty, product_shape
from protocol_sessions import party_values, run_parties

TFP = ProtocolConfig(name="tfp", triple_source="tfp")


def _opened(crypten, shares):
    """Each arithmetic (or binary) sharing of ``shares`` opened in the ring."""
    return [share.reveal() for share in shares]


def _tuples(crypten, rank):
    """Tuples straight from the provider, opened: products, squares and ANDs against torch's
    on the opened factors; and how many bytes of the shared stream a matrix
    triple takes at each party."""
    provider = crypten.mpc.get_default_provider()
    out = {}
    for op, size0, size1 in (("mul", (5, 7), (5, 7)), ("mul", (5, 7), (7,)), ("matmul", (6, 4), (4, 3)),
                             ("matmul", (2, 6, 4), (4, 3)), ("matmul", (4,), (4, 3))):
        a, b, c = _opened(crypten, provider.generate_additive_triple(torch.Size(size0), torch.Size(size1), op))
        out[f"{op} {size0} {size1}"] = torch.equal(c, getattr(torch, op)(a, b))
    r, r2 = _opened(crypten, provider.square(torch.Size((9, 3))))
    out["square"] = torch.equal(r2, r * r)
    a, b, c = _opened(crypten, provider.generate_binary_triple(torch.Size((8, 5)), torch.Size((8, 5))))
    out["and"] = torch.equal(c, a & b)
    a, b, c = _opened(crypten, provider.generate_binary_triple(torch.Size((8, 5)), torch.Size((5,))))
    out["and broadcast"] = torch.equal(c, a & b)
    common = crypten.generators["next" if rank == 0 else "prev"][torch.device("cpu")]
    position = common.stream.bytes_drawn
    provider.generate_additive_triple(torch.Size((3, 2)), torch.Size((2, 5)), "matmul")
    out["stream bytes"] = common.stream.bytes_drawn - position
    return out


def _masks(crypten, rank):
    """A ReLU mask and a carry4 tuple from the source, opened (arithmetic components summed,
    binary ones XOR-ed): their components against those made from their opened r, a, u and
    masks."""
    from crypten.mpc.primitives import ArithmeticSharedTensor, BinarySharedTensor

    part = _part(crypten)
    mask = part.relu_mask(torch.Size((4, 6)))
    arithmetic = {i: ArithmeticSharedTensor.from_shares(mask[i], precision=0).reveal() for i in (0, 3, 5, 6, 7)}
    binary = {i: BinarySharedTensor.from_shares(mask[i]).reveal() for i in (1, 2, 4)}
    r, a, u = arithmetic[0], arithmetic[6], arithmetic[3]
    expected = relu_mask_values(r, a, u)
    relu_exact = (all(torch.equal(arithmetic[i], expected[i]) for i in (3, 5, 7))
                  and all(torch.equal(binary[i], expected[i]) for i in (1, 2, 4)) and bool(((u == 0) | (u == 1)).all()))
    shares = part.carry4_tuple(torch.Size((3, 5)))
    opened = torch.stack([BinarySharedTensor.from_shares(share).reveal() for share in shares])
    return {"relu mask": relu_exact, "carry4 components": len(shares),
            "carry4": torch.equal(opened, carry4_stack(opened[:INPUTS]))}


def _part(crypten):
    """A trusted first party part on the running session (its deals use the session's
    generators and communicator; installing it again would add nothing these calls need)."""
    part = TrustedFirstParty()
    part._crypten = crypten
    return part


def _products(crypten, rank):
    """Fixed-point products of sharings through the session (Beaver with dealt triples, then
    the truncation) against plaintext."""
    generator = torch.Generator().manual_seed(3)
    x, y = torch.randn(16, 8, generator=generator), torch.randn(8, 4, generator=generator)
    sx, sy = crypten.cryptensor(x), crypten.cryptensor(y)
    return {"matmul": (sx.matmul(sy).get_plain_text() - x @ y).abs().max().item(),
            "square": (sx.square().get_plain_text() - x * x).abs().max().item(),
            "mul": (sx[:8, :4].mul(sy).get_plain_text() - x[:8, :4] * y).abs().max().item()}


def test_product_shapes_dealt_from_the_stream():
    assert product_shape("mul", (5, 7), (7,)) == (5, 7)
    assert product_shape("matmul", (6, 4), (4, 3)) == (6, 3)
    assert product_shape("matmul", (2, 6, 4), (4, 3)) is None  # batched: CrypTen's
    assert product_shape("matmul", (6, 4), (5, 3)) is None
    assert product_shape("conv2d", (1, 1, 4, 4), (1, 1, 2, 2)) is None


def test_two_party_tuples_are_exact():
    results = party_values(run_parties(_tuples, TFP, parties=2), 2)
    for result in results:
        assert all(value for key, value in result.items() if key != "stream bytes"), result
    # party 1's shares are a (3, 2), b (2, 5) and c (3, 5) in that order from the shared stream
    assert results[1]["stream bytes"] == 8 * (6 + 10 + 15)
    assert results[0]["stream bytes"] == 8 * (6 + 10 + 15)


def test_fixed_point_products_match_plaintext():
    ulp = 2 ** -16
    for result in party_values(run_parties(_products, TFP, parties=2), 2):
        # |x|, |y| < 5: encoding (1/2 ulp each factor) times up to 8 terms of 5, then 1 ulp truncation
        assert result["matmul"] <= (8 * 5 * 2 * 0.5 + 1) * ulp
        assert result["square"] <= (5 * 2 * 0.5 + 1) * ulp
        assert result["mul"] <= (5 * 2 * 0.5 + 1) * ulp


def test_relu_masks_and_carry4_tuples_are_consistent():
    for result in party_values(run_parties(_masks, TFP, parties=2), 2):
        assert result["relu mask"] and result["carry4"] and result["carry4 components"] == COMPONENTS
