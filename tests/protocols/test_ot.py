"""OT-based preprocessing: base OTs, exact Gilboa products, masked views, a real session."""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest
import torch

from protocols import ProtocolConfig
from protocols.parts import UnsupportedTuple
from nacl.bindings import (crypto_core_ed25519_add, crypto_core_ed25519_scalar_reduce,
                           crypto_scalarmult_ed25519_base_noclamp, crypto_scalarmult_ed25519_noclamp)

from protocols.base_ot import OtError, base_ot_receive, base_ot_send
from protocols.ot import GilboaEngine, OtTripleSource, matmul_u64
from protocols.ot_extension import OtChannel
from protocol_sessions import party_values, run_parties


class _Handle:
    def __init__(self, action=None):
        self.action = action

    def wait(self):
        if self.action:
            self.action()


_PEER_FAILED = object()  # put into the queues when a party raises, so its peer stops waiting


class PeerFailed(ConnectionError):
    pass


class PipeComm:
    """Two parties in two threads of this process, joined by queues (counts bytes sent)."""

    def __init__(self, rank, queues):
        self.rank, self.queues, self.sent = rank, queues, 0

    def get_rank(self):
        return self.rank

    def get_world_size(self):
        return 2

    def _get(self, peer):
        item = self.queues[(peer, self.rank)].get(timeout=60)
        if item is _PEER_FAILED:
            raise PeerFailed(f"party {peer} failed")
        return item

    def send_obj(self, obj, peer):
        self.queues[(self.rank, peer)].put(obj)

    def recv_obj(self, peer):
        return self._get(peer)

    def isend(self, tensor, peer):
        self.sent += tensor.numel() * tensor.element_size()
        self.queues[(self.rank, peer)].put(tensor.clone())
        return _Handle()

    def irecv(self, tensor, peer):
        return _Handle(lambda: tensor.copy_(self._get(peer)))


class LyingComm(PipeComm):
    """A party that lies in its object message number ``index``: it sends ``lie(message, last
    message received)`` instead."""

    def __init__(self, rank, queues, index, lie):
        super().__init__(rank, queues)
        self.index, self.lie, self.objects_sent, self.last_received = index, lie, 0, None

    def send_obj(self, obj, peer):
        if self.objects_sent == self.index:
            obj = self.lie(obj, self.last_received)
        self.objects_sent += 1
        super().send_obj(obj, peer)

    def recv_obj(self, peer):
        self.last_received = super().recv_obj(peer)
        return self.last_received


def outcomes(fn, liar=None, comm_class=PipeComm):
    """``fn(rank, comm)`` for both ranks at once (threads ``party0``, ``party1``); each rank's
    result or exception. ``liar(rank, queues)`` makes party 0's comm (a :class:`LyingComm`)."""
    queues = {(0, 1): queue.Queue(), (1, 0): queue.Queue()}
    results = {}

    def party(rank):
        comm = liar(rank, queues) if liar is not None and rank == 0 else comm_class(rank, queues)
        try:
            results[rank] = fn(rank, comm)
        except BaseException as error:  # surface in the test thread; free the peer at once
            results[rank] = error
            for channel in queues.values():
                channel.put(_PEER_FAILED)

    threads = [threading.Thread(target=party, args=(rank,), name=f"party{rank}") for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results[0], results[1]


def run_pair(fn):
    """``fn(rank, comm)`` for both ranks at once; returns their results."""
    results = outcomes(fn)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def _one(engine, plan, *operands):
    """One kind of product alone: a single plan through one OT extension run."""
    return engine.run([getattr(engine, plan)(*operands)])[0]


def _words(shape, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2**64 - 1, size=shape, dtype=np.uint64, endpoint=True)


@pytest.mark.parametrize("choices", [[0] * 32, [1] * 32, [0, 1] * 16], ids=["all-0", "all-1", "mixed"])
def test_base_ots_deliver_exactly_the_chosen_key(choices):
    def party(rank, comm):
        return base_ot_send(comm, 1, 32) if rank == 0 else base_ot_receive(comm, 0, np.array(choices))

    pairs, chosen = run_pair(party)
    assert all(key == pair[c] and key != pair[1 - c] for key, pair, c in zip(chosen, pairs, choices))
    assert len({k for pair in pairs for k in pair}) == 64


def test_base_ot_messages_are_the_construction(monkeypatch):
    """A = aG, B_i = b_i G + c_i A, key_c = SHA-256(tag, i, A, B_i, shared)[:16] with shared =
    a (B_i - c A) = b_i A: recomputed here from the scalars each party drew, for both choice bits."""
    import hashlib

    from protocols import base_ot

    drawn = {}
    real_scalar = base_ot.random_scalar

    def recorded_scalar():
        scalar = real_scalar()
        drawn.setdefault(threading.current_thread().name, []).append(scalar)
        return scalar

    monkeypatch.setattr(base_ot, "random_scalar", recorded_scalar)
    choices = np.array([0, 1] * 8)
    sent = {}

    class Recording(PipeComm):
        def send_obj(self, obj, peer):
            sent.setdefault(self.rank, []).append(obj)
            super().send_obj(obj, peer)

    keys, chosen = outcomes(lambda rank, comm: base_ot_send(comm, 1, 16) if rank == 0
                            else base_ot_receive(comm, 0, choices), comm_class=Recording)
    (a,), scalars = drawn["party0"], drawn["party1"]
    (big_a,), (message,) = sent[0], sent[1]
    assert big_a == crypto_scalarmult_ed25519_base_noclamp(a)
    for index, (b, choice) in enumerate(zip(scalars, choices)):
        point = message[32 * index: 32 * index + 32]
        b_g = crypto_scalarmult_ed25519_base_noclamp(b)
        assert point == (crypto_core_ed25519_add(b_g, big_a) if choice else b_g)
        shared = crypto_scalarmult_ed25519_noclamp(b, big_a)
        key = hashlib.sha256(b"cotrain-base-ot-ed25519" + index.to_bytes(4, "little") + big_a + point
                             + shared).digest()[:16]
        assert chosen[index] == keys[index][choice] == key != keys[index][1 - choice]


def _tuple_products(rank, comm):
    x = _words(500, 10 + rank)
    return x, _one(GilboaEngine(OtChannel(comm, 1 - rank)), "plan_elementwise", x, _words(500, 20 + rank))


def _other_group_element(message, received):
    return crypto_scalarmult_ed25519_base_noclamp(crypto_core_ed25519_scalar_reduce(bytes(range(64))))


# Party 0 is base-OT sender first (its object message 0 is A), then receiver (message 1 is the
# 128 points B_i). A malformed or invalid point stops the honest party at once with OtError;
# a well-formed lie (another valid group element) passes the base OTs but desynchronises the
# IKNP keys, and every product of the extension comes out wrong (garbage, not a near miss).
LIES = {
    "A-not-a-point": (0, lambda m, r: b"\xff" * 32, "OtError"),
    "A-small-order": (0, lambda m, r: (1).to_bytes(32, "little"), "OtError"),
    "A-truncated": (0, lambda m, r: m[:16], "OtError"),
    "A-not-bytes": (0, lambda m, r: m.hex(), "OtError"),
    "A-another-element": (0, _other_group_element, "garbage"),
    "B-not-a-point": (1, lambda m, r: b"\xff" * 32 + m[32:], "OtError"),
    "B-equals-A": (1, lambda m, r: r + m[32:], "OtError"),  # B - A is the identity
    "B-one-short": (1, lambda m, r: m[:-32], "OtError"),
    "B-one-long": (1, lambda m, r: m + m[:32], "OtError"),
    "B-another-element": (1, lambda m, r: _other_group_element(m, r) + m[32:], "garbage"),
}


@pytest.mark.parametrize("lie", LIES)
def test_a_lie_in_a_base_ot_message_is_refused_or_gives_garbage(lie):
    index, rewrite, expected = LIES[lie]
    liar, honest = outcomes(_tuple_products, lambda rank, queues: LyingComm(rank, queues, index, rewrite))
    if expected == "OtError":  # the honest party's own check, naming the liar and its message
        assert isinstance(honest, OtError), honest
        what = ("sender", "receiver")[index]
        assert "OT peer party 0 sent a" in str(honest) and f"base-OT {what} message" in str(honest), honest
        return
    (x0, z0), (x1, z1) = liar, honest
    exact = x0 * _words(500, 21) + x1 * _words(500, 20)
    assert np.mean(z0 + z1 != exact) > 0.99


def test_gilboa_products_are_exact():
    a, b = [_words((6, 5), s) for s in (1, 2)], [_words((5, 3), s) for s in (3, 4)]
    x, y = [_words(500, s) for s in (5, 6)], [_words(500, s) for s in (7, 8)]

    def party(rank, comm):
        engine = GilboaEngine(OtChannel(comm, 1 - rank))
        return {"matmul": _one(engine, "plan_matmul", a[rank], b[rank]),
                "elementwise": _one(engine, "plan_elementwise", x[rank], y[rank]),
                "one_way": _one(engine, "plan_one_way", x[rank], y[rank]),
                "and": _one(engine, "plan_and", x[rank], y[rank]),
                "bits": _one(engine, "plan_bits_times_words", (x[rank] & np.uint64(1)).astype(np.uint8), y[rank])}

    p0, p1 = run_pair(party)
    assert np.array_equal(p0["matmul"] + p1["matmul"], matmul_u64(a[0], b[1]) + matmul_u64(a[1], b[0]))
    assert np.array_equal(p0["elementwise"] + p1["elementwise"], x[0] * y[1] + x[1] * y[0])
    assert np.array_equal(p0["one_way"] + p1["one_way"], x[0] * y[1])
    assert np.array_equal(p0["and"] ^ p1["and"], (x[0] & y[1]) ^ (x[1] & y[0]))
    bit = [v & np.uint64(1) for v in x]
    assert np.array_equal(p0["bits"] + p1["bits"], bit[0] * y[1] + bit[1] * y[0])


CONV = (("dilation", (1, 1)), ("groups", 1), ("padding", (1, 0)), ("stride", (2, 1)))
BILINEAR_KEYS = [("triple", "conv2d", (2, 3, 5, 4), (4, 3, 2, 2), CONV),
                 ("triple", "conv_transpose1d", (2, 3, 5), (3, 2, 3), (("stride", (2,)),)),
                 ("triple", "conv1d", (1, 4, 6), (2, 2, 3), (("groups", 2),)),
                 ("triple", "conv_transpose2d", (1, 2, 3, 3), (2, 1, 2, 2),
                  (("dilation", (2, 1)), ("groups", 2), ("padding", (1, 0)), ("stride", (2, 2)))),
                 ("triple", "matmul", (6, 4, 2, 10), (10, 3), ()),
                 ("triple", "matmul", (2, 4, 3), (2, 3, 4), ()),
                 ("triple", "matmul", (2, 1, 4, 3), (3, 3, 2), ()),
                 ("triple", "matmul", (5,), (5, 3), ())]


# The outputs one kernel weight of BILINEAR_KEYS' convolutions reaches, of all outputs: its
# channel (2 images of 3 x 3, of 4 channels); every other output of the stride-2 transposed
# convolution in its channel (2 x 5 of 2 x 2 x 11); its channel (1 x 4 of 2 channels); the 3 x 3
# inputs' outputs in its group's one channel, less the padding's cropped row (6 of 2 x 5 x 6).
CONVOLUTION_REACH = {"conv2d": (18, 72), "conv_transpose1d": (10, 44), "conv1d": (4, 8), "conv_transpose2d": (6, 60)}


def test_convolution_and_batched_matmul_triples_are_exact():
    """c = op(a, b) over the ring, for CrypTen's other Beaver products (its nn layers ask for them);
    a convolution's correlations carry one output channel per kernel weight, not every output."""
    convolutions = [key for key in BILINEAR_KEYS if key[1].startswith("conv")]

    def party(rank, comm):
        source = OtTripleSource()
        source.engine = GilboaEngine(OtChannel(comm, 1 - rank))
        widths = [source._plan(key)[0][0].words for key in convolutions]
        return source.produce(BILINEAR_KEYS), widths

    (triples0, widths0), (triples1, widths1) = run_pair(party)
    assert widths0 == widths1 == [CONVOLUTION_REACH[key[1]][0] for key in convolutions]
    for key, shares0, shares1 in zip(BILINEAR_KEYS, triples0, triples1):
        _, op, size0, size1, kwargs = key
        a, b, c = (x + y for x, y in zip(shares0, shares1))  # int64 addition wraps as the ring
        assert (a.shape, b.shape) == (size0, size1)
        assert torch.equal(c, getattr(torch, op)(a, b, **dict(kwargs))), key
        assert c.numel() == CONVOLUTION_REACH.get(op, (0, c.numel()))[1]
        assert not torch.equal(shares0[2], c)  # a share is not the product


def test_sign_masks_and_wrap_bits_are_exact():
    """The packed comparison's sign masks (r, s = -r as XOR shares, s's bit pairs' ANDs) and the
    top-bit truncation's wrap-bit tuples (each party's private bit, shares of their AND)."""
    from protocols.bitpack import pair_products

    keys = [("signmask", (300,)), ("wrapbit", (2, 150)), ("signmask", (3, 1))]

    def party(rank, comm):
        source = OtTripleSource()
        source.engine = GilboaEngine(OtChannel(comm, 1 - rank))
        return source.produce(keys)

    (mask0, wrap0, small0), (mask1, wrap1, small1) = run_pair(party)
    for (r0, s0, pairs0), (r1, s1, pairs1) in ((mask0, mask1), (small0, small1)):
        s = s0 ^ s1
        assert torch.equal(r0 + r1, -s)  # int64 addition wraps as the ring
        assert torch.equal(pairs0 ^ pairs1, pair_products(s))
    assert len(torch.unique(mask0[0] + mask1[0])) == 300  # r is uniform, not a constant
    (word0, and0), (word1, and1) = wrap0, wrap1
    assert torch.equal(and0 + and1, (word0 < 0).long() & (word1 < 0).long())
    assert 0.3 < (word0 < 0).float().mean() < 0.7 and 0.3 < (word1 < 0).float().mean() < 0.7


@pytest.mark.parametrize("key", [
    ("triple", "conv2d", (8, 16, 28, 28), (16, 16, 5, 5), ()),  # too many correlations
    ("triple", "conv1d", (1, 1, 16384), (1, 1, 16384), ()),  # few, but a basis of 16384^2 words
])
def test_a_convolution_triple_too_large_for_ot_is_refused_by_name(key):
    with pytest.raises(UnsupportedTuple, match=rf"{key[1]} triples of up to \d+ correlation words.*protocol=dealer"):
        OtTripleSource()._plan(key)


@pytest.mark.parametrize("fill", [0, 2**64 - 1])
def test_each_side_sees_only_uniformly_masked_messages(fill):
    """Even for constant inputs (all-zero or all-one bits), every received view is uniform."""
    count = 4000
    value = np.full(count, fill, dtype=np.uint64)

    def party(rank, comm):
        channel = OtChannel(comm, 1 - rank, record=True)
        _one(GilboaEngine(channel), "plan_elementwise", value, value)
        return [view for _, view in channel.views]

    for views in run_pair(party):
        u_bytes, tau = views  # the peer's IKNP u columns, then its tau corrections
        u_matrix = u_bytes.reshape(128, -1)
        for view in (u_matrix, tau):
            bits = np.unpackbits(np.ascontiguousarray(view).view(np.uint8))
            assert abs(bits.mean() - 0.5) < 0.01, f"a view is biased: {bits.mean():.4f}"
        # and no OT's u column bit pattern repeats the choice pattern (all choices equal here)
        assert len(np.unique(u_matrix[:, :64], axis=0)) == u_matrix.shape[0]


def test_bytes_per_triple():
    """Per party and elementwise triple: 64 OTs of 16 bytes of u plus 64 corrections, the one for
    bit i cut to the 64 - i bits that survive the shift by i, back to back (260 bytes in all);
    per exchange, two 16-byte headers."""
    count = 3000
    x, y = [_words(count, s) for s in (1, 2)], [_words(count, s) for s in (3, 4)]

    def party(rank, comm):
        engine = GilboaEngine(OtChannel(comm, 1 - rank))
        before = comm.sent
        _one(engine, "plan_elementwise", x[rank], y[rank])  # both cross terms of `count` triples
        return comm.sent - before

    for sent in run_pair(party):
        assert sent == count * (64 * 16 + 260) + 2 * 16


@pytest.mark.parametrize("block_bytes", [None, 1], ids=["blocks", "64-ot-blocks"])
def test_many_requests_over_many_exchanges_are_exact(monkeypatch, block_bytes):
    """Small exchanges split requests mid-group and mix kinds: every product still exact. With
    blocks of 64 OTs (the fewest) a segment's blocks start at bits of the message that are no
    byte's first (a scaled correction for bit i is 64 - i bits)."""
    from protocols import ot_extension, ot_hash

    monkeypatch.setattr(ot_extension, "CHUNK_WORDS", 1000)
    if block_bytes is not None:
        monkeypatch.setattr(ot_hash, "_BLOCK_BYTES", block_bytes)
    a, b = [_words((7, 5), s) for s in (1, 2)], [_words((5, 3), s) for s in (3, 4)]
    x, y = [_words(37, s) for s in (5, 6)], [_words(37, s) for s in (7, 8)]

    def party(rank, comm):
        engine = GilboaEngine(OtChannel(comm, 1 - rank))
        plans = [engine.plan_elementwise(x[rank], y[rank]), engine.plan_matmul(a[rank], b[rank]),
                 engine.plan_and(x[rank], y[rank]), engine.plan_one_way(x[rank], y[rank]),
                 engine.plan_bits_times_words((x[rank] & np.uint64(1)).astype(np.uint8), y[rank])]
        return engine.run(plans), engine.channel.exchanges

    (p0, exchanges), (p1, _) = run_pair(party)
    assert exchanges > 10
    bit = [v & np.uint64(1) for v in x]
    assert np.array_equal(p0[0] + p1[0], x[0] * y[1] + x[1] * y[0])
    assert np.array_equal(p0[1] + p1[1], matmul_u64(a[0], b[1]) + matmul_u64(a[1], b[0]))
    assert np.array_equal(p0[2] ^ p1[2], (x[0] & y[1]) ^ (x[1] & y[0]))
    assert np.array_equal(p0[3] + p1[3], x[0] * y[1])
    assert np.array_equal(p0[4] + p1[4], bit[0] * y[1] + bit[1] * y[0])


def test_exchanges_are_bounded_in_words_and_in_ots():
    """An exchange holds at most the word budget and at most the OT cap (the u, t and q
    columns grow with OTs, the corrections with words); an OT wider than the budget gets one of
    its own; the ranges cover every OT once, in order."""
    from protocols.ot_extension import chunk_bounds

    counts, words = [10, 3, 25, 4], [1, 40, 2, 1]
    bounds = chunk_bounds(counts, words, 30, 8)
    width = np.repeat(words, counts)
    assert [low for low, _ in bounds] == [0] + [high for _, high in bounds[:-1]] and bounds[-1][1] == sum(counts)
    for low, high in bounds:
        assert high - low <= 8 and (width[low:high].sum() <= 30 or high - low == 1)
    assert (10, 11) in bounds and (12, 13) in bounds  # the 40-word OTs, one per exchange
    assert bounds[0] == (0, 8)  # the cap, not the budget (8 words), closes the first


class TamperingComm(PipeComm):
    """Party 0, rewriting its raw message number ``index`` (0: the first extension header,
    1: its u columns, 2: the corrections header, 3: the corrections) with ``lie(tensor)``."""

    def __init__(self, rank, queues, index, lie):
        super().__init__(rank, queues)
        self.index, self.lie, self.raw_sent = index, lie, 0

    def isend(self, tensor, peer):
        if self.raw_sent == self.index:
            tensor = self.lie(tensor)
        self.raw_sent += 1
        return super().isend(tensor, peer)


def _announcing(field, change):
    def lie(header):
        header = header.clone()
        header[field] += change
        return header
    return lie


HEADER_LIES = {
    "u-one-byte-short": (0, _announcing(1, -1), "u-columns message: exchange 0 of"),
    "u-one-byte-long": (0, _announcing(1, 1), "u-columns message: exchange 0 of"),
    "u-replayed-exchange": (0, _announcing(0, -1), "u-columns message: exchange -1 of"),
    "corrections-short": (2, _announcing(1, -8), "corrections message: exchange 0 of"),
    "replayed-exchange": (2, _announcing(0, 1), "corrections message: exchange 1 of"),
    # a peer sending whole 8-byte corrections where the bits above 64 - i are cut (500 products)
    "corrections-untrimmed": (2, _announcing(1, 500 * (64 * 8 - 260)), "corrections message: exchange 0 of"),
}


@pytest.mark.parametrize("lie", HEADER_LIES)
def test_a_header_announcing_another_length_or_exchange_is_refused(lie):
    index, rewrite, message = HEADER_LIES[lie]
    _, honest = outcomes(_tuple_products, lambda rank, queues: TamperingComm(rank, queues, index, rewrite))
    assert isinstance(honest, OtError), honest
    assert "OT peer party 0 sent a malformed" in str(honest) and message in str(honest), honest


@pytest.mark.parametrize("index", [1, 3], ids=["u-columns", "corrections"])
def test_garbage_of_the_right_length_gives_garbage_products(index):
    """Semi-honest: random bytes in place of a message cannot be told from an honest one, and
    every product built on them is wrong, not nearly right."""
    garbage = lambda tensor: torch.randint(0, 256, tensor.shape, dtype=torch.uint8)  # noqa: E731
    liar, honest = outcomes(_tuple_products, lambda rank, queues: TamperingComm(rank, queues, index, garbage))
    (x0, z0), (x1, z1) = liar, honest
    assert np.mean(z0 + z1 != x0 * _words(500, 21) + x1 * _words(500, 20)) > 0.99


def _compute(crypten, rank):
    torch.manual_seed(2)
    a, b = torch.randn(16, 4), torch.randn(4, 2)
    x, w = crypten.cryptensor(a), crypten.cryptensor(b)
    return {
        "provider": crypten.mpc.get_default_provider().NAME,
        "matmul": ((x @ w).get_plain_text() - a @ b).abs().max().item(),
        "square": (x.square().get_plain_text() - a * a).abs().max().item(),
        "sigmoid": ((x @ w).sigmoid().get_plain_text() - (a @ b).sigmoid()).abs().max().item(),
        "relu": (x.relu().get_plain_text() - a.relu()).abs().max().item(),
        "div": (x.div(5).get_plain_text() - a / 5).abs().max().item(),
    }


@pytest.mark.slow
def test_session_over_ot():
    suite = ProtocolConfig(name="ot", triple_source="ot", truncation="topbits", comparison="packed")
    results = party_values(run_parties(_compute, suite, parties=2, timeout_s=240), 2)
    for result in results:
        assert result["provider"] == "COTRAIN_OT"
        assert max(result[k] for k in ("matmul", "square", "relu", "div")) < 1e-3
        assert result["sigmoid"] < 1e-2


def test_ot_says_it_is_two_party():
    from protocols.suite import check_party_count

    check_party_count(ProtocolConfig(triple_source="ot"), 2)
    with pytest.raises(ValueError, match="2-party protocol"):
        check_party_count(ProtocolConfig(triple_source="ot"), 3)


def _reference_pads(columns, first, count, index0, words):
    """H(j, b, x) = AES_k(sigma(x) ^ (j, b + 1)) ^ sigma(x) ^ (j, b + 1) row by row, with the rows
    transposed by numpy's bit unpacking and AES from ``cryptography`` (the construction as
    SECURITY.md states it)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from protocols.ot_hash import HASH_KEY

    bits = np.unpackbits(columns.view(np.uint8), axis=1, bitorder="little")[:, first: first + count]
    rows = np.packbits(bits.T, axis=1, bitorder="little").view(np.uint64)  # (count, 2): x_L, x_R
    blocks = (words + 1) // 2
    tweaked = np.empty((count, blocks, 2), np.uint64)
    tweaked[:, :, 0] = (rows[:, 0] ^ rows[:, 1] ^ (np.uint64(index0) + np.arange(count, dtype=np.uint64)))[:, None]
    tweaked[:, :, 1] = rows[:, :1] ^ np.arange(1, blocks + 1, dtype=np.uint64)
    encrypted = Cipher(algorithms.AES(HASH_KEY), modes.ECB()).encryptor().update(tweaked.tobytes())
    return (np.frombuffer(encrypted, np.uint64).reshape(count, 2 * blocks) ^ tweaked.reshape(count, -1))[:, :words]


@pytest.mark.parametrize("first, count, words", [(0, 1, 1), (37, 200, 1), (64, 64, 3), (5, 1000, 4), (100, 27, 2)])
def test_hash_pads_are_the_fixed_key_aes_construction(first, count, words):
    """The fused kernel (transposition, sigma, tweaks, AES) against the construction computed
    plainly; the sender's second copy hashes x ^ s."""
    from protocols.ot_hash import CrHash, sigma

    rng = np.random.default_rng(count)
    width = (first + count + 63) // 64
    q = rng.integers(0, 2**64 - 1, size=(128, width), dtype=np.uint64, endpoint=True)
    s = rng.integers(0, 2, size=128).astype(np.uint8)
    s_row = np.packbits(s, bitorder="little")
    encrypted, inputs = CrHash().pads(q, first, count, 1000, words, sigma(s_row))
    pads = (encrypted ^ inputs)[:, :, :words]
    assert np.array_equal(pads[0], _reference_pads(q, first, count, 1000, words))
    q_plus_s = q ^ (np.uint64(0) - s.astype(np.uint64))[:, None]  # every row XOR s
    assert np.array_equal(pads[1], _reference_pads(q_plus_s, first, count, 1000, words))
    encrypted, inputs = CrHash().pads(q, first, count, 1000, words)
    assert np.array_equal((encrypted[0] ^ inputs[0])[:, :words], pads[0])


@pytest.mark.parametrize("count", [1, 100, 4096])
def test_extension_columns_are_iknp(count):
    """The receiver's u = G(k0) ^ G(k1) ^ r and t = G(k0), and the sender's q = G(k_s) ^ (u & s),
    column by column, against the keystreams read plainly (the cipher XORs u and r in as it
    writes): so q ^ t is s where the choice bit is 1 and 0 where it is 0, OT by OT."""
    from protocols.ot_extension import ExtensionReceiver, ExtensionSender
    from protocols.prg import CipherStream

    rng = np.random.default_rng(count)
    keys = [(rng.bytes(16), rng.bytes(16)) for _ in range(128)]
    s = rng.integers(0, 2, size=128).astype(np.uint8)
    choices = rng.integers(0, 2, size=count).astype(np.uint8)
    width = (count + 63) // 64 * 8
    u, t, _ = ExtensionReceiver(keys).columns(choices)
    u = u.copy()
    r = np.zeros(width, np.uint8)
    r[: (count + 7) // 8] = np.packbits(choices, bitorder="little")
    g0 = np.stack([CipherStream(k0).read(width) for k0, _ in keys])
    g1 = np.stack([CipherStream(k1).read(width) for _, k1 in keys])
    assert np.array_equal(t.view(np.uint8), g0)
    assert np.array_equal(u, g0 ^ g1 ^ r[None, :])
    q, _ = ExtensionSender(s, [pair[bit] for pair, bit in zip(keys, s)]).q_columns(u, count)
    bits = np.unpackbits((q ^ t).view(np.uint8), axis=1, bitorder="little")[:, :count]  # (column i, OT j)
    assert np.array_equal(bits, s[:, None] & choices[None, :])


def _relu_mask_opened(mask0, mask1):
    """A ReLU mask's values from both parties' shares: r, s, pairs, u (arithmetic), u (XOR), r u, a, a u."""
    r, s, pairs = mask0[0] + mask1[0], mask0[1] ^ mask1[1], mask0[2] ^ mask1[2]
    u, u_bit = mask0[3] + mask1[3], mask0[4] ^ mask1[4]
    return r, s, pairs, u, u_bit, mask0[5] + mask1[5], mask0[6] + mask1[6], mask0[7] + mask1[7]


@pytest.mark.parametrize("size", [(301,), (2, 3), (1,)])
def test_relu_masks_are_exact_and_cost_their_ots(size):
    """A ReLU mask opened (int64 addition wraps as the ring): r = -s, s's bit pairs' ANDs, u the
    same bit as an arithmetic and an XOR sharing, r u and a u, for odd counts too (the sign mask's
    bit products split unevenly between the choosers, its pairs' AND words half full). Its OTs:
    64 bit products per element one way, 32 pair ANDs each way (the last word padded), and one
    COT each way for the products with u (in a second run)."""
    from protocols.bitpack import pair_products

    count = int(np.prod(size))

    def party(rank, comm):
        source = OtTripleSource()
        source.engine = GilboaEngine(OtChannel(comm, 1 - rank))
        (mask,) = source.produce([("relumask", size)])
        return mask, source.engine.channel.ots, source.engine.channel.exchanges

    (mask0, ots0, runs0), (mask1, ots1, _) = run_pair(party)
    r, s, pairs, u, u_bit, r_u, a, a_u = _relu_mask_opened(mask0, mask1)
    assert all(t.shape == size for t in (r, s, pairs, u, u_bit, r_u, a, a_u))
    assert torch.equal(r, -s) and torch.equal(pairs, pair_products(s))
    assert torch.equal(u, u_bit) and bool(((u == 0) | (u == 1)).all())
    assert torch.equal(r_u, r * u) and torch.equal(a_u, a * u)
    and_words = -(-32 * count // 64)  # the pairs' bits, 64 to a word
    assert ots0 == ots1 == count * 64 + 2 * 64 * and_words + 2 * count and runs0 == 2
    if count > 100:
        assert 0.3 < u.float().mean() < 0.7 and len(torch.unique(a)) == count


def test_bit_rows_and_balanced_bit_products_are_exact():
    """One COT carrying a row of words per bit, and bit products where rank 0 chooses for the
    first half of the elements (odd count: it takes the extra one) and its peer for the rest."""
    bits = [(_words(7, s) & np.uint64(1)) for s in (1, 2)]
    rows = [_words((7, 3), s) for s in (3, 4)]
    matrix = [np.unpackbits(_words(5, s).view(np.uint8), bitorder="little").reshape(5, 64) for s in (5, 6)]
    weights = [_words((5, 64), s) for s in (7, 8)]

    def party(rank, comm):
        engine = GilboaEngine(OtChannel(comm, 1 - rank))
        return engine.run([engine.plan_bits_times_words(bits[rank].astype(np.uint8), rows[rank]),
                           engine.plan_bit_products_balanced(matrix[rank], weights[rank])])

    (rows0, balanced0), (rows1, balanced1) = run_pair(party)
    assert np.array_equal(rows0 + rows1, bits[0][:, None] * rows[1] + bits[1][:, None] * rows[0])
    # element e < 3: rank 0 chooses with its bits, rank 1's weights selected; e >= 3 the other way
    chosen = np.concatenate([(matrix[0][:3] * weights[1][:3]).sum(axis=1, dtype=np.uint64),
                             (matrix[1][3:] * weights[0][3:]).sum(axis=1, dtype=np.uint64)])
    assert np.array_equal(balanced0 + balanced1, chosen)


def _relu_masks(rank, comm):
    source = OtTripleSource()
    source.engine = GilboaEngine(OtChannel(comm, 1 - rank))
    return source.produce([("relumask", (500,))])[0]


# a relumask's first extension run is party 0's raw messages 0-3 (u header, u, corrections
# header, corrections); its second run, the products with u, 4-7
@pytest.mark.parametrize("index, change, message", [
    (4, _announcing(1, -1), "u-columns message: exchange 1 of"),
    (6, _announcing(1, 8), "corrections message: exchange 1 of"),
    (6, _announcing(0, 1), "corrections message: exchange 2 of"),
], ids=["second-run-u-short", "second-run-corrections-long", "second-run-replayed"])
def test_a_malformed_message_in_a_relu_masks_second_run_is_refused(index, change, message):
    _, honest = outcomes(_relu_masks, lambda rank, queues: TamperingComm(rank, queues, index, change))
    assert isinstance(honest, OtError), honest
    assert "OT peer party 0 sent a malformed" in str(honest) and message in str(honest), honest


def test_garbage_corrections_give_a_wrong_relu_mask():
    """Semi-honest: a peer's random corrections cannot be told from honest ones, and what is
    built on them comes out wrong exactly where the honest party chose: in the first run the sign
    mask's bit products of the second half of the elements (party 1 chooses there), so r = -s
    fails there; in the second run the products with u where party 1's bit u_1 is 1."""
    garbage = lambda tensor: torch.randint(0, 256, tensor.shape, dtype=torch.uint8)  # noqa: E731
    for index in (3, 7):
        liar, honest = outcomes(_relu_masks, lambda rank, queues: TamperingComm(rank, queues, index, garbage))
        r, s, _, u, _, r_u, _, _ = _relu_mask_opened(liar, honest)
        if index == 3:
            assert torch.equal(r[:250], -s[:250]) and bool((r[250:] != -s[250:]).all())
        else:
            chosen = honest[4] == 1
            assert torch.equal(r_u != r * u, chosen) and torch.equal(r_u[~chosen], (r * u)[~chosen])
