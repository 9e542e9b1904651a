"""The dealer: tuples that reconstruct correctly, a session over it, and its failures."""

from __future__ import annotations

import functools
import operator
import os
import re

import pytest
import torch

from protocols import ProtocolConfig
from protocols.dealer import (LATE_WORK, SCRATCH_ELEMENTS, SemiHonestMaker, answer_elements, answer_parts, batch_stream,
                              correction_elements, count_wraps, deal_answers, deal_parts, expand, fill_late,
                              late_components, late_parts)
from protocols.bitpack import pair_products
from protocols.carry4 import INPUTS, SUBSETS
from protocols.dealer_wire import DealerEnd, DealerError, check_header
from protocols.tuples import check_key, tuple_elements, tuple_layout, wrap_bit_key
from protocols.prg import CipherGenerator, new_seed
from protocols.registry import part_class
from protocols.truncation import wrap_bit_values
from protocol_sessions import exact_products, party_values, run_parties

DEALER = ProtocolConfig(name="dealer", triple_source="dealer")


def _and_all(words):
    total = words[0]
    for word in words[1:]:
        total = total & word
    return total


def _open(shares, sharing):
    total = shares[0].clone()
    for share in shares[1:]:
        total = total + share if sharing == "a" else total ^ share
    return total


@pytest.mark.parametrize("parties", [2, 3])
def test_every_tuple_kind_reconstructs_from_seeds_and_the_corrections_alone(parties):
    keys = [check_key(k) for k in [
        ["triple", "mul", [4, 3], [4, 3], []], ["triple", "matmul", [5, 4], [4, 2], []],
        ["triple", "conv2d", [1, 1, 5, 5], [2, 1, 3, 3], [["padding", 1]]], ["square", [7]],
        ["binary", [6], [6]], ["b2a", [9]], ["trunc", [8], 65536], ["wrap", [5]], ["signmask", [6]], ["relumask", [7]],
        ["carry4", [5]]]
        + ([["wrapbit", [7]]] if parties == 2 else [])]
    assert correction_elements(keys[0]) == 12 and tuple_elements(keys[0]) == 36
    _check_reconstructs(keys, parties)


@pytest.mark.parametrize("parties", [2, 3])
def test_large_tuples_summed_through_the_reused_draw_buffer_reconstruct_too(parties):
    """From SCRATCH_ELEMENTS on the dealer adds each further party's draw in through one reused
    buffer (and a same-shape product or a wrap bit in place): the same shares as drawn alone."""
    big = SCRATCH_ELEMENTS + 3
    keys = [check_key(k) for k in [
        ["triple", "mul", [big], [big], []], ["triple", "mul", [big], [1], []], ["square", [big]],
        ["triple", "matmul", [67, 70], [70, 65], []], ["binary", [big], [big]], ["trunc", [big], 65536],
        ["trunc", [big], 3], ["wrap", [big]], ["signmask", [big]], ["relumask", [big]], ["carry4", [big]],
        ["triple", "mul", [big], [big], []]]
        + ([["wrapbit", [big]]] if parties == 2 else [])]
    _check_reconstructs(keys, parties, positions=(7,))


def _check_reconstructs(keys, parties, positions=(0, 5, (1 << 62) - 1)):
    rng = CipherGenerator(new_seed())
    seeds = [new_seed() for _ in range(parties)]
    for position in positions:
        answers = deal_answers(keys, seeds, position, rng)
        # what travels: the position, then the corrections of the non-random components
        assert [a.numel() for a in answers] == [answer_elements(keys, p, parties) for p in range(parties)]
        dealt = [expand(keys, seed, answers[party], party, parties) for party, seed in enumerate(seeds)]
        for index, key in enumerate(keys):
            shares = [dealt[party][index] for party in range(parties)]
            layout = tuple_layout(key)
            for party in shares:
                assert [tuple(s.shape) for s in party] == [shape for _, shape in layout]
            values = [_open([p[i] for p in shares], sharing) for i, (sharing, _) in enumerate(layout)]
            kind = key[0]
            if kind == "triple":
                op, kwargs = key[1], dict(key[4])
                assert torch.equal(values[2], getattr(torch, op)(values[0], values[1], **kwargs))
            elif kind == "square":
                assert torch.equal(values[1], values[0] * values[0])
            elif kind == "binary":
                assert torch.equal(values[2], values[0] & values[1])
            elif kind == "b2a":
                assert torch.equal(values[0], values[1]) and set(values[0].tolist()) <= {0, 1}
            elif kind == "trunc":
                r, msb, low = values
                assert torch.equal(msb, (r < 0).long()) and torch.equal(low, (r & ((1 << 63) - 1)) // key[2])
            elif kind == "wrap":
                assert torch.equal(values[1], count_wraps([p[0] for p in shares]))
            elif kind == "signmask":
                assert torch.equal(values[1], -values[0]) and torch.equal(values[2], pair_products(-values[0]))
            elif kind == "relumask":
                r, negated, pairs, u, u_word, r_u, a, a_u = values
                assert torch.equal(negated, -r) and torch.equal(pairs, pair_products(-r))
                assert torch.equal(u, u_word & 1) and set(u.tolist()) <= {0, 1}  # the word's bit 0 is u
                assert torch.equal(r_u, r * u) and torch.equal(a_u, a * u)
            elif kind == "carry4":  # seven masks, then their subsets' ANDs
                assert all(torch.equal(values[INPUTS + j], _and_all([values[i] for i in subset]))
                           for j, subset in enumerate(SUBSETS))
            elif kind == "wrapbit":  # each party's own word, whose top bit is its private bit
                bits, both = wrap_bit_values([p[0] for p in shares])
                assert torch.equal(values[1], both) and all(set(b.tolist()) <= {0, 1} for b in bits)
            # no party's share is the value itself
            assert not any(torch.equal(party[0], values[0]) for party in shares)


@pytest.mark.parametrize("parties", [2, 3])
def test_each_tuple_corrects_at_the_party_that_has_received_least_of_the_request(parties):
    """A ReLU mask corrects 5 words and a byte per element, a carry4 tuple 22, a product 1: dealt in turn
    one party would receive nearly all (the one that then lags every round); by what each
    has received so far they come out within one tuple of each other, and still open right."""
    keys = [check_key(k) for k in [["relumask", [64]], ["triple", "mul", [8], [8], []], ["carry4", [16]],
                                   ["triple", "mul", [8], [8], []]]]
    seeds, rng = [new_seed() for _ in range(parties)], CipherGenerator(new_seed())
    answers = deal_answers(keys, seeds, 9, rng)
    received = [a.numel() - 1 for a in answers]
    assert received == [answer_elements(keys, p, parties) - 1 for p in range(parties)]
    assert sum(received) == sum(correction_elements(key) for key in keys)
    mask, product, carry = 5 * 64 + 64 // 8, 8, 22 * 16  # the mask's u word in 8 bits
    # the mask at party 0, the carry4 tuple at another, each product where least has gone
    assert received == ([mask + product, product + carry] if parties == 2 else [mask, 2 * product, carry])
    dealt = [expand(keys, seed, answers[party], party, parties) for party, seed in enumerate(seeds)]
    for index in (1, 3):
        a, b, c = (_open([dealt[p][index][i] for p in range(parties)], "a") for i in range(3))
        assert torch.equal(c, a * b)
    masks = [_open([dealt[p][2][i] for p in range(parties)], "b") for i in range(INPUTS + len(SUBSETS))]
    assert all(torch.equal(masks[INPUTS + j], _and_all([masks[i] for i in subset])) for j, subset in enumerate(SUBSETS))


def test_answers_draw_from_disjoint_stretches_of_a_stream():
    seed = new_seed()
    first, second = batch_stream(seed, 0).ring(1000), batch_stream(seed, 1).ring(1000)
    assert torch.equal(batch_stream(seed, 1).ring(1000), second)  # the party and the dealer agree
    assert not (first.unsqueeze(1) == second.unsqueeze(0)).any()


@pytest.mark.parametrize("bad", [["nope", [1]], ["triple", "exp", [2], [2], []], ["square", [-1]],
                                 ["trunc", [2], 0], ["square", [1 << 20, 1 << 10]], "x", [],
                                 ["wrapbit", [2], 0], ["wrapbit", [2], 64], ["wrapbit", [2], "16"]])
def test_malformed_requests_are_refused(bad):
    with pytest.raises(ValueError):
        check_key(bad)


def _hidden_layer_gradients(crypten, truncation_ulps: int) -> dict[str, bool]:
    """A hidden layer's product (both factors need a gradient: their Beaver openings and
    truncations batched) against torch, each element within the bound from encoding every
    input (u = 2^-16 each) and one truncation (``truncation_ulps``), plus u^2 per term."""
    from protocols.crypten_hooks import layer_matmul

    u = 2.0 ** -16
    generator = torch.Generator().manual_seed(3)
    h, w, g = (torch.randn(*shape, generator=generator) for shape in ((16, 8), (8, 3), (16, 3)))
    secure_h, secure_w = crypten.cryptensor(h, requires_grad=True), crypten.cryptensor(w, requires_grad=True)
    layer_matmul(crypten, secure_h, secure_w).backward(crypten.cryptensor(g))
    checks = {}
    for name, got, exact, left, right in (("input", secure_h.grad, g @ w.t(), g, w.t()),
                                          ("weight", secure_w.grad, h.t() @ g, h.t(), g)):
        bound = u * (left.abs().sum(1, keepdim=True) + right.abs().sum(0, keepdim=True)) + u * u * left.shape[1] + truncation_ulps * u
        checks[name] = bool(((got.get_plain_text() - exact).abs() <= bound).all())
    return checks


def _compute(crypten, rank, truncation_ulps=1):
    torch.manual_seed(1)
    a, b = torch.randn(8, 4), torch.randn(4, 3)
    x, y = crypten.cryptensor(a), crypten.cryptensor(b)
    out = {
        "matmul": ((x @ y).get_plain_text() - a @ b).abs().max().item(),
        "square": ((x * x).get_plain_text() - a * a).abs().max().item(),
        "relu": ((x.relu()).get_plain_text() - a.relu()).abs().max().item(),
        "sigmoid": ((x.sigmoid()).get_plain_text() - a.sigmoid()).abs().max().item(),
    }
    out["exact_products"] = exact_products(crypten, rank)
    out["hidden_layer_gradients"] = _hidden_layer_gradients(crypten, truncation_ulps)
    from protocols.suite import ProtocolSuite  # noqa: F401
    source = crypten.mpc.get_default_provider()
    out["provider"] = source.NAME
    return out


def test_a_wrap_bit_tuple_for_more_than_two_parties_is_refused():
    assert SemiHonestMaker(2).validate([["wrapbit", [4]]]) == [("wrapbit", (4,))]
    with pytest.raises(ValueError, match="a wrap-bit tuple is for two parties, not 3"):
        SemiHonestMaker(3).validate([["triple", "mul", [2], [2], []], ["wrapbit", [4]]])


# topbits with 3 parties truncates with pairs (their wraps are not one OR of top bits)
@pytest.mark.parametrize("parties, truncation", [(2, "topbits"), (3, "topbits"), (3, "local")])
def test_session_over_a_dealer(parties, truncation):
    # with 3 parties, CrypTen's own (local) truncation uses the dealer's wrap tuples; it rounds
    # each party's share towards zero, so it is up to one ulp per party off, either way
    # (topbits, pairs: 1)
    protocol = ProtocolConfig(name="dealer", triple_source="dealer", truncation=truncation)
    ulps = part_class("truncation", truncation).error_bound(parties).ulps
    collected = run_parties(functools.partial(_compute, truncation_ulps=ulps), protocol, parties=parties)
    for result in party_values(collected, parties):
        assert result["provider"] == "COTRAIN_DEALER"
        assert len(result["exact_products"]) == 3 and all(result["exact_products"].values())
        assert result["hidden_layer_gradients"] == {"input": True, "weight": True}
        assert result["matmul"] < 1e-3 and result["square"] < 1e-3 and result["relu"] < 1e-3
        assert result["sigmoid"] < 1e-2
    status, stats = collected[parties]
    assert status == "ok" and stats["tuples"] > 0 and stats["bytes_sent"] > 0


def _dying_dealer(transport, parties):
    DealerEnd(transport, parties).hello("dealer", [torch.zeros(2, dtype=torch.long)] * parties)  # 16-byte seeds
    [transport.recv_obj(rank) for rank in range(parties)]  # the first request, then the process dies without a word
    os._exit(3)


def _lying_dealer(transport, parties):
    wire = DealerEnd(transport, parties)
    wire.hello("dealer", [torch.zeros(2, dtype=torch.long)] * parties)  # 16-byte seeds
    items = wire.request()
    wire.answer(len(items), [torch.zeros(1, dtype=torch.long)] * parties)  # one element, fewer than asked for
    wire.request()


def _multiply(crypten, rank):
    x = crypten.cryptensor(torch.ones(3))
    return (x * x).get_plain_text().tolist()


@pytest.mark.parametrize("dealer_fn,message", [(_dying_dealer, "failed or stopped answering"),
                                               (_lying_dealer, "sent a malformed answer")])
def test_a_failing_dealer_stops_the_run_with_a_clear_error(dealer_fn, message, capfd):
    collected = run_parties(_multiply, DEALER, parties=2, dealer_fn=dealer_fn, timeout_s=90, wire_timeout_s=8)
    errors = [value for rank, (status, value) in collected.items() if rank < 2 and status == "error"]
    # a dead dealer is named either by the wire (DealerError) or, when it wins the race, by the
    # gloo peer watch, which prints its verdict and ends the party at once
    watched = [line for line in capfd.readouterr().err.splitlines()
               if re.match(r"cotrain: party party\d failed: TransportError: .*party 2 \(dealer\) (is|are) gone", line)]
    assert errors or (dealer_fn is _dying_dealer and watched), f"the parties should fail, got {collected}"
    assert all(error.startswith("DealerError") for error in errors)
    assert watched or any(message in error for error in errors)


def _party_lying_about_again(again, crypten, rank):
    """Party 1 asks for the same tuples as party 0 but with its own ``again`` flag."""
    from protocols.dealer_wire import DealerLink

    if rank == 1:
        honest_send = DealerLink._send
        DealerLink._send = lambda link, message: honest_send(
            link, {**message, "again": again(message.get("again", False))} if message.get("op") == "deal" else message)
    return _multiply(crypten, rank)


@pytest.mark.parametrize("again, message", [
    (operator.not_, "the parties' requests differ (parties [1] disagree with party 0)"),
    (int, "parties [1] sent malformed requests"),  # 0 where the others send no flag, 1 where True
], ids=["flipped", "as a number"])
def test_a_request_whose_again_flag_lies_is_refused_to_every_party(again, message):
    """The dealer answers a request flagged ``again`` twice: a party flagging it otherwise than
    the others (or flagging it with something not a bool) gets every party a refusal naming it,
    not answers that some wait on in vain."""
    collected = run_parties(functools.partial(_party_lying_about_again, again), DEALER, parties=2, timeout_s=90,
                            wire_timeout_s=8)
    for rank in range(2):
        status, error = collected[rank]
        assert status == "error" and error.startswith("DealerError") and message in error, collected[rank]
    status, error = collected[2]
    assert status == "error" and message in error, collected[2]


@pytest.mark.parametrize("header, message", [
    ("tuples", "sent a malformed answer: expected answer (items 2, elements 6), got tuples"),
    ({"op": "answer", "items": 2, "elements": 5}, "expected answer (items 2, elements 6)"),  # fewer elements
    ({"op": "answer", "items": 1, "elements": 6}, "expected answer (items 2, elements 6)"),  # fewer tuples
    ({"op": "answer", "items": 2}, "expected answer (items 2, elements 6)"),  # no size
    ({"op": "answer", "items": 2, "elements": -6}, "expected answer (items 2, elements 6)"),
    ({"op": "hello", "dealer": "dealer", "elements": 0}, "expected answer"),  # out of order
    ({"op": "refused", "error": "the parties' requests differ"}, "refused the request: the parties' requests differ"),
])
def test_every_malformed_answer_header_is_refused(header, message):
    with pytest.raises(DealerError, match=re.escape(message)):
        check_header(header, "answer", "the dealer (rank 2)", items=2, elements=6)
    assert check_header({"op": "answer", "items": 2, "elements": 6}, "answer", "the dealer", items=2, elements=6) == 6


@pytest.mark.parametrize("header", [{"op": "hello", "dealer": "authenticated_dealer", "elements": 3},
                                    {"op": "hello", "dealer": "dealer", "elements": 1 << 40},
                                    {"op": "refused", "error": "no"}])
def test_a_hello_from_another_kind_of_dealer_or_of_absurd_size_is_refused(header):
    with pytest.raises(DealerError, match="sent a malformed hello"):
        check_header(header, "hello", "the dealer (rank 2)", dealer="dealer")


@pytest.mark.parametrize("op, size0, size1, kwargs", [
    ("mul", [4, 1], [1, 3], []), ("mul", [], [5], []), ("matmul", [512, 32], [32, 1], []),
    ("matmul", [3, 4, 5], [5, 2], []), ("matmul", [5], [5, 2], []),
    ("conv2d", [1, 2, 6, 6], [3, 2, 3, 3], [["padding", 1], ["stride", 2]])])
def test_each_triple_product_has_the_shape_torch_gives_it(op, size0, size1, kwargs):
    key = check_key(["triple", op, size0, size1, kwargs])
    product = getattr(torch, op)(torch.zeros(size0), torch.zeros(size1), **dict(kwargs))
    assert tuple_layout(key)[2][1] == tuple(product.shape)


# a product whose c costs the dealer 2^24 multiply-adds (64 x 4096 x 64): dealt late
LATE_MATMUL = ["triple", "matmul", [64, 4096], [4096, 64], []]


@pytest.mark.parametrize("key, late", [
    (LATE_MATMUL, (2,)), (["triple", "matmul", [64, 4095], [4095, 64], []], ()),  # one multiply-add short of it
    (["triple", "matmul", [2, 64, 2048], [2048, 64], []], (2,)),  # batched
    (["triple", "conv2d", [1, 16, 128, 128], [16, 16, 3, 3], [["padding", 1]]], (2,)),  # 128^2 x 16 outputs x 144
    (["triple", "conv2d", [1, 16, 64, 64], [16, 16, 3, 3], [["padding", 1]]], ()),
    (["triple", "conv_transpose2d", [1, 16, 128, 128], [16, 16, 3, 3], []], (2,)),
    (["triple", "mul", [1 << 24], [1 << 24], []], ()), (["square", [1 << 24]], ()), (["trunc", [1 << 24], 65536], ())])
def test_only_a_large_matrix_product_or_convolution_comes_late(key, late):
    assert late_components(check_key(key)) == late


@pytest.mark.parametrize("parties", [2, 3])
def test_a_late_product_is_dealt_after_the_answer_and_opens_right(parties):
    """The answer leaves out the late c (its party's share is None until the late part
    comes), every other tuple of the request is in it, and with the late part every tuple
    opens right: the late triple's a and b are the stretch of each stream the answer skipped."""
    rng = CipherGenerator(new_seed())
    seeds = [new_seed() for _ in range(parties)]
    keys = [check_key(k) for k in [["triple", "mul", [4, 3], [4, 3], []], LATE_MATMUL, ["trunc", [8], 65536],
                                   LATE_MATMUL, ["square", [7]]]]
    first, make_late = deal_parts(keys, seeds, 77, rng)
    late = make_late()
    assert [(f.numel(), l.numel()) for f, l in zip(first, late)] == [answer_parts(keys, p, parties)
                                                                      for p in range(parties)]
    assert sum(l.numel() for l in late) == 2 * 64 * 64  # the two c's, nothing else
    dealt = [expand(keys, seed, first[party], party, parties) for party, seed in enumerate(seeds)]
    missing = {(party, index, j) for party in range(parties) for index, shares in enumerate(dealt[party])
               for j, share in enumerate(shares) if share is None}
    assert {(index, j) for _, index, j in missing} == {(1, 2), (3, 2)} and len(missing) == 2
    for party, seed in enumerate(seeds):
        fill_late(keys, dealt[party], late[party], party, parties)
    # a whole answer (the late part appended, as the maker's deal gives it) splits at answer_parts
    whole = deal_answers(keys, seeds, 78, rng)
    assert [w.numel() for w in whole] == [answer_elements(keys, p, parties) for p in range(parties)]
    split = [expand(keys, seed, whole[p][:answer_parts(keys, p, parties)[0]], p, parties,
                    whole[p][answer_parts(keys, p, parties)[0]:]) for p, seed in enumerate(seeds)]
    a, b, c = (_open([split[p][3][i] for p in range(parties)], "a") for i in range(3))
    assert torch.equal(c, a @ b)
    for index, key in enumerate(keys):
        values = [_open([dealt[p][index][i] for p in range(parties)], "a") for i in range(len(tuple_layout(key)))]
        if key[0] == "triple":
            assert torch.equal(values[2], getattr(torch, key[1])(values[0], values[1]))
        elif key[0] == "square":
            assert torch.equal(values[1], values[0] * values[0])
        else:
            r, msb, low = values
            assert torch.equal(msb, (r < 0).long()) and torch.equal(low, (r & ((1 << 63) - 1)) // key[2])
    assert not torch.equal(_open([dealt[p][1][0] for p in range(parties)], "a"),
                           _open([dealt[p][3][0] for p in range(parties)], "a"))  # two triples, fresh draws
    assert LATE_WORK == 1 << 24


def test_a_late_products_truncation_tuple_comes_late_with_it():
    """The truncation tuple asked for right after a late product, for its result, comes in
    the late part too (it is used only after c); one for another shape, one after a product
    that is not late, or one first in the request does not."""
    result = [64, 64]
    keys = [check_key(k) for k in [LATE_MATMUL, ["wrapbit", result], ["trunc", result, 65536], LATE_MATMUL,
                                   ["trunc", result, 65536], ["wrapbit", [8]],
                                   ["triple", "matmul", [64, 8], [8, 64], []], ["wrapbit", result]]]
    assert late_parts(keys) == [(2,), (1,), (), (2,), (1, 2), (), (), ()]
    assert late_parts(keys[1:3]) == [(), ()]


@pytest.mark.parametrize("parties, truncation", [(2, ["wrapbit", [64, 64]]), (2, ["trunc", [64, 64], 65536]),
                                                 (3, ["trunc", [64, 64], 65536])])
def test_a_late_products_truncation_tuple_opens_right_from_the_late_part(parties, truncation):
    """A product's request (its triple and its truncation's tuple, as ``expect`` announces
    them): the answer is every party's position word alone; both tuples' corrections come in
    the late part, and the shares then open to a triple and a truncation tuple."""
    rng = CipherGenerator(new_seed())
    seeds = [new_seed() for _ in range(parties)]
    keys = [check_key(LATE_MATMUL), check_key(truncation)]
    first, make_late = deal_parts(keys, seeds, 91, rng)
    assert [f.numel() for f in first] == [1] * parties
    late = make_late()
    assert sum(l.numel() for l in late) == 64 * 64 * (1 + len(late_parts(keys)[1]))
    assert [(f.numel(), l.numel()) for f, l in zip(first, late)] == [answer_parts(keys, p, parties)
                                                                      for p in range(parties)]
    dealt = [expand(keys, seed, first[party], party, parties) for party, seed in enumerate(seeds)]
    assert sum(share is None for party in dealt for shares in party for share in shares) == 1 + len(late_parts(keys)[1])
    for party in range(parties):
        fill_late(keys, dealt[party], late[party], party, parties)
    a, b, c = (_open([dealt[p][0][i] for p in range(parties)], "a") for i in range(3))
    assert torch.equal(c, a @ b)
    shares = [dealt[p][1] for p in range(parties)]
    if truncation[0] == "wrapbit":
        bits, both = wrap_bit_values([s[0] for s in shares])
        assert torch.equal(_open([s[1] for s in shares], "a"), both) and 0 < int(both.sum()) < both.numel()
    else:
        r, msb, low = (_open([s[i] for s in shares], "a") for i in range(3))
        assert torch.equal(msb, (r < 0).long()) and torch.equal(low, (r & ((1 << 63) - 1)) // 65536)


def _late_truncated_products(crypten, rank):
    """Fixed-point products whose triple and truncation tuple both come late, against torch
    (within the encoding's and one truncation's error), the first made inline, the later ones
    asked ahead."""
    generator = torch.Generator().manual_seed(9)
    plain = [torch.randn(64, 4096, generator=generator) / 8, torch.randn(4096, 64, generator=generator) / 8]
    u = 2.0 ** -16
    bound = u * (plain[0].abs().sum(1, keepdim=True) + plain[1].abs().sum(0, keepdim=True)) + u * u * 4096 + 2 * u
    x, y = crypten.cryptensor(plain[0]), crypten.cryptensor(plain[1])
    exact = plain[0] @ plain[1]
    return [float(((x.matmul(y).get_plain_text() - exact).abs() - bound).max()) for _ in range(5)]


@pytest.mark.parametrize("truncation", ["topbits", "pairs"])
def test_truncated_products_whose_tuples_come_late_over_a_real_dealer(truncation):
    config = ProtocolConfig(name="dealer", triple_source="dealer", truncation=truncation)
    collected = run_parties(_late_truncated_products, config, parties=2, timeout_s=300)
    for result in party_values(collected, 2):
        assert len(result) == 5 and max(result) <= 0.0
    status, served = collected[2]
    assert status == "ok" and served["late_parts"] >= 5


def _late_products(crypten, rank):
    """Products whose triples come late, against torch: in the ring (exact), in fixed point
    (within the encoding's and one truncation's error), through the Beaver product, the batched
    layer products and the provider's triple taken whole."""
    from crypten.mpc import MPCTensor
    from protocols.crypten_hooks import matmuls_together

    generator = torch.Generator().manual_seed(5)
    ring = [torch.randint(-(1 << 63), (1 << 63) - 1, size, generator=generator) for size in ((64, 4096), (4096, 64))]
    x, y = (MPCTensor.from_shares(v if rank == 0 else torch.zeros_like(v), precision=0)
            + crypten.cryptensor(torch.zeros(v.shape), precision=0) for v in ring)
    # repeated: from its fourth use on the step is predicted and asked ahead (again), so late
    # parts made inline and made ahead both arrive while requests go out
    out = {"ring": all(torch.equal(x.matmul(y).get_plain_text(), ring[0] @ ring[1]) for _ in range(8))}
    u = 2.0 ** -16
    plain = [torch.randn(64, 4096, generator=generator) / 8, torch.randn(4096, 64, generator=generator) / 8]
    bound = u * (plain[0].abs().sum(1, keepdim=True) + plain[1].abs().sum(0, keepdim=True)) + u * u * 4096 + u
    x, y = crypten.cryptensor(plain[0]), crypten.cryptensor(plain[1])
    exact = plain[0] @ plain[1]
    out["fixed"] = bool(((x.matmul(y).get_plain_text() - exact).abs() <= bound).all())
    together = matmuls_together([(x, y), (x, y)])
    out["together"] = [bool(((z.get_plain_text() - exact).abs() <= bound).all()) for z in together]
    a, b, c = crypten.mpc.get_default_provider().generate_additive_triple((64, 4096), (4096, 64), "matmul")
    out["whole triple"] = torch.equal(c.get_plain_text(), a.get_plain_text() @ b.get_plain_text())
    return out


@pytest.mark.parametrize("parties", [2, 3])
def test_products_with_late_triples_over_a_real_dealer(parties):
    collected = run_parties(_late_products, DEALER, parties=parties, timeout_s=300)
    for result in party_values(collected, parties):
        assert result == {"ring": True, "fixed": True, "together": [True, True], "whole triple": True}
    status, served = collected[parties]
    # 12 products above came late (some answers carry only truncation tuples)
    assert status == "ok" and served["late_parts"] >= 12


def _late_lying_dealer(transport, parties):
    """Answers honestly, then sends a late part one element short."""
    maker = SemiHonestMaker(parties)
    wire = DealerEnd(transport, parties)
    wire.hello(maker.kind, maker.greeting())
    items = maker.validate(wire.request())
    first, make_late = maker.deal_parts(items)
    wire.answer(len(items), first)
    wire.late(len(items), [part[:-1] for part in make_late()])
    wire.request()


def _late_product(crypten, rank):
    x, y = crypten.cryptensor(torch.ones(64, 4096)), crypten.cryptensor(torch.ones(4096, 64))
    return (x @ y).get_plain_text().tolist()


def test_a_malformed_late_part_stops_the_run_with_a_clear_error():
    collected = run_parties(_late_product, DEALER, parties=2, dealer_fn=_late_lying_dealer, timeout_s=90,
                            wire_timeout_s=8)
    # the matmul's c corrects at party 0 (the request's first tuple): it finds the lie; its
    # peer, waiting for it in the next opening, fails too, or the peer watch ends it at once
    status, error = collected[0]
    assert status == "error" and error.startswith("DealerError") and "sent a malformed late" in error
    assert collected.get(1, ("ended by the peer watch",))[0] != "ok"


@pytest.mark.parametrize("header", [{"op": "answer", "items": 2, "elements": 6}, {"op": "late", "items": 2, "elements": 5},
                                    {"op": "late", "items": 1, "elements": 6}, {"op": "refused", "error": "no"}])
def test_a_late_part_with_another_header_is_refused(header):
    with pytest.raises(DealerError, match="sent a malformed late"):
        check_header(header, "late", "the dealer (rank 2)", items=2, elements=6)
    assert check_header({"op": "late", "items": 2, "elements": 6}, "late", "the dealer", items=2, elements=6) == 6


@pytest.mark.parametrize("bits, word", [(1, 8), (8, 8), (12, 16), (16, 16), (20, 32), (32, 32), (40, 64)])
def test_a_wrap_bit_tuple_asked_for_k_bits_opens_right_mod_2k_in_a_narrower_word(bits, word):
    """topbits uses the AND's shares only shifted left by 64 - k: asked for k bits, the dealer
    sends the correction party's share as k bits in the narrowest word that holds them (7
    elements: the last int64 word part padding), and the shares add up to the AND mod 2^k,
    inline and in a late product's late part."""
    rng, seeds = CipherGenerator(new_seed()), [new_seed(), new_seed()]
    narrow = wrap_bit_key([7], bits)
    assert check_key(list(narrow)) == narrow and (len(narrow) == 2) == (bits == 64)
    keys = [check_key(["triple", "mul", [7], [7], []]), narrow]
    answers = deal_answers(keys, seeds, 3, rng)
    # the product's c corrects at party 0, the wrap bit's at party 1: in ceil(7 word / 64) words
    assert [a.numel() for a in answers] == [1 + 7, 1 + -(-7 * word // 64)]
    assert [a.numel() for a in answers] == [answer_elements(keys, p, 2) for p in range(2)]
    for batch in (keys, [check_key(LATE_MATMUL), wrap_bit_key([64, 64], bits)]):
        first, make_late = deal_parts(batch, seeds, 5, rng)
        late = make_late() if make_late is not None else [None, None]
        dealt = [expand(batch, seed, first[p], p, 2, late[p]) for p, seed in enumerate(seeds)]
        (words, and_shares) = zip(*(dealt[p][1] for p in range(2)))
        both = wrap_bit_values(list(words))[1]
        modulus = 1 << bits
        assert torch.equal(_open(list(and_shares), "a") % modulus, both % modulus)
        assert batch is keys or 0 < int(both.sum()) < both.numel()
        if word < 64:  # the correction party's share is its k bits alone (sign-extended where k fills the word)
            assert bool(((and_shares[1] >= -(modulus >> 1)) & (and_shares[1] < modulus)).all())


@pytest.mark.parametrize("tamper", ["padding", "high bits"])
def test_a_narrow_correction_with_bits_it_should_not_have_is_refused(tamper):
    """A k-bit correction carries nothing above its k bits nor in its padding: a dealer that
    sets them sent something this party did not ask for."""
    seeds, rng = [new_seed(), new_seed()], CipherGenerator(new_seed())
    keys = [check_key(["triple", "mul", [7], [7], []]), wrap_bit_key([7], 12)]
    answer = deal_answers(keys, seeds, 3, rng)[1].clone()
    narrow = answer[1:].view(torch.int16)
    narrow[7 if tamper == "padding" else 2] |= 1 << 13
    with pytest.raises(DealerError, match=re.escape("the dealer sent a malformed answer: a 12-bit correction")):
        expand(keys, seeds[1], answer, 1, 2)


def _narrow_lying_dealer(transport, parties):
    """The real dealer, but every narrow correction it packs has its last word's top bits set
    (the padding of a wrap-bit tuple of 3 elements in 16-bit words)."""
    from parties.dealer import serve_tuples
    import protocols.dealer as dealer

    honest = dealer.pack_correction

    def lying(key, j, values):
        words = honest(key, j, values).clone()
        if words.numel() < values.numel():
            words[-1] |= 1 << 62
        return words

    dealer.pack_correction = lying
    return serve_tuples(transport, parties, SemiHonestMaker(parties))


def test_a_dealer_lying_in_a_narrow_correction_stops_the_run_naming_the_dealer():
    config = ProtocolConfig(name="dealer", triple_source="dealer", truncation="topbits")
    collected = run_parties(_multiply, config, parties=2, dealer_fn=_narrow_lying_dealer, timeout_s=90,
                            wire_timeout_s=8)
    errors = [value for rank, (status, value) in collected.items() if rank < 2 and status == "error"]
    assert errors and all(error.startswith("DealerError") for error in errors), collected
    assert any("the dealer sent a malformed answer: a 16-bit correction" in error for error in errors), errors
