"""Matmul triples from BFV (protocols.he_matmul, triple_source=ot_he): exact in Z_2^64 for
full-range 64-bit entries, between two parties (threads with real SEAL, then processes over the
real transport), and a peer's malformed messages refused with HeError, not a hang."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal
import torch

from protocols import ProtocolConfig
from protocols.he_matmul import HeError, HeMatmul
from protocols.ot import matmul_u64
from protocol_sessions import party_values, run_parties
from test_ot import TamperingComm, _words, outcomes, run_pair

W6 = (512, 32, 64)  # W6's first layer: batch 512, 32 features, 64 hidden units


def _cross(shapes):
    """Both parties' shares of A0 B1 + A1 B0 for each (m, k, n), and the exact value."""
    def party(rank, comm):
        engine = HeMatmul(comm, 1 - rank)
        return engine.cross([(_words((m, k), 10 + rank), _words((k, n), 20 + rank)) for m, k, n in shapes])

    shares = run_pair(party)
    exact = [matmul_u64(_words((m, k), 10), _words((k, n), 21)) + matmul_u64(_words((m, k), 11), _words((k, n), 20))
             for m, k, n in shapes]
    return shares, exact


def test_cross_products_are_exact_in_the_ring():
    """W6's product, its weight gradient's (inner dimension 512), the largest inner dimension, a ragged
    one (blocks that do not divide it), a vector and a 1 x 1: one batch, every entry exact."""
    shapes = [W6, (32, 512, 64), (3, 1024, 5), (37, 45, 29), (1, 64, 1), (1, 1, 1)]
    (mine, theirs), exact = _cross(shapes)
    for shape, z0, z1, value in zip(shapes, mine, theirs, exact):
        assert z0.shape == z1.shape == (shape[0], shape[2])
        assert np.array_equal(z0 + z1, value), shape


def test_small_and_zero_operands_are_exact():
    """Operands whose high parts are zero (entries below 16: SEAL refuses a zero plaintext's
    product, so those terms are left out) and all-zero ones, beside a full-range product."""
    def party(rank, comm):
        engine = HeMatmul(comm, 1 - rank)
        small = np.arange(6 * 5, dtype=np.uint64).reshape(6, 5) % np.uint64(16)
        zeros = np.zeros((5, 3), np.uint64)
        return engine.cross([(small, small.T.copy()), (small, zeros), (_words((6, 5), rank), zeros + np.uint64(rank))])

    (mine, theirs) = run_pair(party)
    small = np.arange(30, dtype=np.uint64).reshape(6, 5) % np.uint64(16)
    exact = [2 * matmul_u64(small, small.T.copy()), np.zeros((6, 3), np.uint64),
             matmul_u64(_words((6, 5), 0), np.ones((5, 3), np.uint64))]
    for z0, z1, value in zip(mine, theirs, exact):
        assert np.array_equal(z0 + z1, value)


def test_shares_are_masked():
    """Neither share alone is the cross product (each party's is offset by a 64-bit mask)."""
    (mine, theirs), exact = _cross([(8, 16, 8)])
    assert np.mean(mine[0] == exact[0]) < 0.01 and np.mean(theirs[0] == exact[0]) < 0.01


def test_every_coefficient_the_decryptor_sees_is_masked():
    """With A and B all ones the product polynomial's other coefficients are small counts of
    A[i, j] B[j', l] (j != j'): what party 0 decrypts must show none of them, nor the product."""
    shape = (64, 8, 16)

    def party(rank, comm):
        engine = HeMatmul(comm, 1 - rank)
        blocks = engine.plan(*shape)
        (mb, kb, nb), parts = blocks.blocks, 2  # A' B + a B' and a b
        if rank == 1:  # multiplies party 0's ones by its ones, masks, returns
            theirs = engine._swap([], parts * mb * kb, "operands")
            engine._swap(engine._multiply(theirs, np.ones(shape[1:], np.uint64), blocks)[0], 0, "products")
            return None
        engine._swap(engine._encrypt(np.ones(shape[:2], np.uint64), blocks), 0, "operands")
        answers = engine._swap([], parts * mb * nb, "products")
        decrypted = []
        for data in (answers[0], answers[mb * nb]):  # each part's first block
            ciphertext = engine._load(tenseal.sealapi.Ciphertext(), engine.bfv.context, data, "product")
            plain = tenseal.sealapi.Plaintext()
            engine.bfv.decryptor.decrypt(ciphertext, plain)
            decrypted.append(np.array([plain.data(e) if e < plain.coeff_count() else 0 for e in range(8192)], dtype=object))
        return decrypted

    parts, _ = run_pair(party)
    for coefficients in parts:  # small counts, or 2^59 - 1 for A' = -1 / 32 mod 2^59, would show
        near = np.mean([min(int(c), 2**59 - int(c)) < 1 << 20 for c in coefficients])
        assert near < 0.001 and len(set(coefficients.tolist())) > 8000


def test_an_inner_dimension_beyond_the_mask_range_is_unsupported():
    from protocols.parts import UnsupportedTuple

    def party(rank, comm):
        engine = HeMatmul(comm, 1 - rank)
        engine.plan(4, 1024, 4)  # W6-sized and larger inner dimensions fit
        with pytest.raises(UnsupportedTuple, match="mask range"):
            engine.plan(4, 1100, 4)
        return True

    assert run_pair(party) == (True, True)


# party 0's raw messages: 0-2 its public keys (header, lengths, bytes), 3-5 its encrypted
# operands, 6-8 its masked products
def _garbage(tensor):
    return torch.randint(0, 256, tensor.shape, dtype=torch.uint8)


def _one_fewer(header):
    header = header.clone()
    header[1] -= 1
    return header


@pytest.mark.parametrize("index, lie, message", [
    (2, _garbage, "invalid public key"),
    (5, _garbage, "invalid encrypted operand"),
    (8, _garbage, "invalid masked product"),
    (3, _one_fewer, "malformed encrypted operands message"),
], ids=["garbage-key", "garbage-operands", "garbage-products", "wrong-count"])
def test_a_malformed_message_is_refused(index, lie, message):
    """Random bytes where SEAL's serialization belongs fail SEAL's checks on load; a header
    announcing the wrong number of ciphertexts is refused before anything is read: HeError."""
    def party(rank, comm):
        engine = HeMatmul(comm, 1 - rank)
        return engine.cross([(_words((8, 4), rank), _words((4, 8), rank))])

    liar, honest = outcomes(party, lambda rank, queues: TamperingComm(rank, queues, index, lie))
    assert isinstance(honest, HeError) and message in str(honest), honest


def test_a_mixed_batch_keeps_its_order():
    """One produce() of matmul triples BFV takes (W6's, a batch of rows), two too small for it
    (W6's second layer's: BFV would send half the bytes for ~8x Gilboa's CPU), and other tuples:
    each tuple exact and in its key's place."""
    from protocols.ot import GilboaEngine, OtChannel
    from protocols.ot_he import OtHeTripleSource

    keys = [("triple", "matmul", (4, 3), (3, 2), ()), ("triple", "matmul", (512, 32), (32, 64), ()),
            ("triple", "mul", (5,), (5,), ()), ("triple", "matmul", (2, 256, 32), (32, 64), ()),
            ("square", (7,)), ("triple", "matmul", (512, 64), (64, 1), ())]

    def party(rank, comm):
        source = OtHeTripleSource()
        source.engine, source.he = GilboaEngine(OtChannel(comm, 1 - rank)), HeMatmul(comm, 1 - rank)
        return [source._by_he(key) is not None for key in keys], source.produce(keys)

    (by_he, tuples0), (_, tuples1) = run_pair(party)
    assert by_he == [False, True, False, True, False, False]
    for key, shares0, shares1 in zip(keys, tuples0, tuples1):
        opened = [x + y for x, y in zip(shares0, shares1)]  # int64 addition wraps as the ring
        if key[0] == "square":
            assert torch.equal(opened[1], opened[0] * opened[0])
            continue
        a, b, c = opened
        assert (a.shape, b.shape) == (key[2], key[3])
        assert torch.equal(c, getattr(torch, key[1])(a, b)), key


def _triples(crypten, rank):
    """Matmul triples through the CrypTen provider, opened: exact in the ring."""
    provider = crypten.mpc.get_default_provider()
    out = {"provider": provider.NAME}
    for size0, size1 in (((512, 32), (32, 64)), ((4, 512, 32), (32, 64)), ((6, 4), (4, 3))):
        a, b, c = provider.generate_additive_triple(torch.Size(size0), torch.Size(size1), "matmul")
        a, b, c = (t.get_plain_text() for t in (a, b, c))
        out[f"{size0} {size1}"] = bool(torch.equal(c, a @ b))
    return out


@pytest.mark.slow
def test_triples_between_two_party_processes():
    """Over the real transport: W6's shape and a batched one by BFV, a small one by Gilboa."""
    suite = ProtocolConfig(name="ot", triple_source="ot_he", truncation="topbits", comparison="packed")
    for result in party_values(run_parties(_triples, suite, parties=2, timeout_s=300), 2):
        assert result.pop("provider") == "COTRAIN_OT"
        assert all(result.values()), result


@pytest.mark.parametrize("positions, values", [
    ([5, 0, 8191, 17], [3, 1, 2**58 + 7, 0]),  # a zero term, the constant and the top term
    ([0], [0]),  # no term at all
    (list(range(0, 8192, 128)), None),  # 64 terms: the most the polynomial syntax takes
], ids=["mixed", "zero", "full-width"])
def test_sparse_plaintexts_are_the_written_ones(positions, values):
    """A plaintext in SEAL's polynomial syntax holds the same coefficients as one written in its
    binary format and loaded with SEAL's checks, every one of the 8192."""
    from protocols import he_matmul

    def party(rank, comm):
        engine = HeMatmul(comm, 1 - rank)
        chosen = values if values is not None else [engine.bfv.t - 1 - i for i in range(len(positions))]
        where, what = np.array(positions), np.array(chosen, np.uint64)
        sparse = engine._plaintext(where, what)
        coefficients = np.zeros(8192, np.uint64)
        coefficients[where] = what
        body = bytes(32) + np.uint64(8192).tobytes() + np.float64(1.0).tobytes() + engine._words(coefficients)
        written = engine._load(tenseal.sealapi.Plaintext(), engine.bfv.context, engine._serialized(body), "plaintext")
        read = lambda plain: [plain.data(e) if e < plain.coeff_count() else 0 for e in range(8192)]  # noqa: E731
        return len(positions) <= he_matmul.SPARSE_TERMS and read(sparse) == read(written) == coefficients.tolist()

    assert run_pair(party) == (True, True)


def test_words_split_at_their_low_bits():
    """Every word is low + 32 high mod 2^64 with low centered in [-16, 16) and high below 2^59,
    at the edges (0, 15, 16, -16, -17, -1) and for random words; every low value occurs."""
    from protocols.he_matmul import split_low

    words = np.concatenate([np.array([0, 15, 16, 17, 31, 32, 2**64 - 16, 2**64 - 17, 2**64 - 1], np.uint64),
                            _words(5000, 3)])
    low, high = split_low(words)
    assert low.dtype == np.int64 and high.dtype == np.uint64
    assert [(int(w) - int(x) - 32 * int(h)) % 2**64 for w, x, h in zip(words, low, high)] == [0] * len(words)
    assert low.min() == -16 and low.max() == 15 and len(set(low.tolist())) == 32 and int(high.max()) < 2**59
    assert low[:9].tolist() == [0, 15, -16, -15, -1, 0, -16, 15, -1]


def test_bfv_starts_at_the_first_product_it_takes():
    """No keys for a batch of small tuples (W5's kind of session never makes any); both parties
    start BFV in the batch whose product it takes, and that product is exact."""
    from protocols.ot import GilboaEngine, OtChannel
    from protocols.ot_he import OtHeTripleSource

    small = [("triple", "matmul", (512, 64), (64, 1), ()), ("triple", "mul", (5,), (5,), ())]
    large = [("triple", "matmul", (512, 32), (32, 64), ())]

    def party(rank, comm):
        source = OtHeTripleSource()
        source.comm, source.engine = comm, GilboaEngine(OtChannel(comm, 1 - rank))
        source.produce(small)
        before = source.he
        return before, source.produce(large)[0], source.he is not None

    (before0, triple0, after0), (before1, triple1, after1) = run_pair(party)
    assert before0 is None and before1 is None and after0 and after1
    a, b, c = (x + y for x, y in zip(triple0, triple1))
    assert torch.equal(c, a @ b)


def test_flooding_residues_are_the_integers_mod_each_prime():
    """The flooding term's chunks, read as integers, against their residues mod SEAL's 50-bit
    primes (one reduction after summing the chunks' products: no word overflows), and the
    chunks of 127-bit integers spread over the whole range."""
    from protocols.he_matmul import CHUNK_BITS, chunk_residues, uniform_chunks

    moduli = [(1 << 50) - 27, (1 << 49) + 69, 1125899906826241]
    chunks = uniform_chunks(3000, 127)
    chunks[0] = (1 << CHUNK_BITS) - 1  # the largest chunks everywhere: the worst case for the sums
    chunks[0, -1] = (1 << (127 - CHUNK_BITS * (chunks.shape[1] - 1))) - 1
    values = [sum(int(c) << (CHUNK_BITS * i) for i, c in enumerate(row)) for row in chunks]
    assert values[0] == (1 << 127) - 1 and max(values[1:]) < 1 << 127 and max(values[1:]) >= 1 << 125
    residues = chunk_residues(chunks, moduli)
    assert residues.tolist() == [[v % q for v in values] for q in moduli]
    with pytest.raises(ValueError, match="overflow"):
        chunk_residues(uniform_chunks(4, 170), moduli)


def _he_beside_ot(rank, comm):
    """BFV products in lockstep with an OT extension run over the same peer (as ``ot_he``
    sends a batch): both exact; the OT run alone over several exchanges."""
    from protocols.ot import GilboaEngine
    from protocols.ot_extension import OtChannel, lockstep

    he = HeMatmul(comm, 1 - rank)
    engine = GilboaEngine(OtChannel(comm, 1 - rank))
    x, y = _words(300, 30 + rank), _words(300, 40 + rank)
    products, crosses = lockstep(engine.run_steps([engine.plan_elementwise(x, y)]),
                                 he.cross_steps([(_words((8, 4), 50 + rank), _words((4, 8), 60 + rank))]))
    return products, crosses, engine.channel.exchanges, he.exchanges


def test_he_products_in_lockstep_with_an_ot_run_are_exact(monkeypatch):
    """Two runs of different lengths (the OT run in 3 exchanges of 2 rounds, the HE run in 2
    rounds) each exact, and each in its own numbered exchanges."""
    from protocols import ot_extension

    monkeypatch.setattr(ot_extension, "CHUNK_OTS", 64 * 128)
    (ot0, he0, exchanges, he_exchanges), (ot1, he1, _, _) = run_pair(_he_beside_ot)
    x, y = [_words(300, 30 + rank) for rank in (0, 1)], [_words(300, 40 + rank) for rank in (0, 1)]
    assert np.array_equal(ot0[0] + ot1[0], x[0] * y[1] + x[1] * y[0])
    a, b = [_words((8, 4), 50 + rank) for rank in (0, 1)], [_words((4, 8), 60 + rank) for rank in (0, 1)]
    assert np.array_equal(he0[0] + he1[0], matmul_u64(a[0], b[1]) + matmul_u64(a[1], b[0]))
    assert exchanges == 3 and he_exchanges == 3  # the keys' exchange, then the products' two


# party 0's raw messages in lockstep: 0-2 its public keys; round 1: 3-4 the OT u columns (header,
# bytes), 5-7 its encrypted operands; round 2: 8-9 the OT corrections, 10-12 its masked products
@pytest.mark.parametrize("index, lie, error, message", [
    (3, _one_fewer, "OtError", "OT peer party 0 sent a malformed u-columns message"),
    (5, _one_fewer, "HeError", "HE peer party 0 sent a malformed encrypted operands message"),
    (7, _garbage, "HeError", "HE peer party 0 sent an invalid encrypted operand"),
    (8, _one_fewer, "OtError", "OT peer party 0 sent a malformed corrections message"),
    (10, _one_fewer, "HeError", "HE peer party 0 sent a malformed masked products message"),
], ids=["ot-u-header", "he-operands-header", "he-operands-garbage", "ot-corrections-header", "he-products-header"])
def test_a_malformed_message_in_lockstep_is_refused_naming_the_party(index, lie, error, message):
    """A lie in either run's messages, in either round, is refused by that run's own checks."""
    liar, honest = outcomes(_he_beside_ot, lambda rank, queues: TamperingComm(rank, queues, index, lie))
    assert type(honest).__name__ == error and message in str(honest), honest
