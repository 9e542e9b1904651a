"""The cipher PRGs: known answers, uniformity, seed agreement between real parties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protocols import ProtocolConfig
from protocols.prg import READ_AHEAD_BYTES, CipherGenerator, CipherStream, new_seed
from protocol_sessions import party_values, run_parties


def test_aes_ctr_known_answer():
    # AES-128 with the all-zero key on the all-zero block (FIPS-197 style known answer)
    stream = CipherStream(bytes(16), "aes_ctr")
    assert stream.read(16).tobytes().hex() == "66e94bd4ef8a2c3b884cfa59ca342b2e"


@pytest.mark.parametrize("algorithm", ["aes_ctr", "chacha20"])
def test_streams_are_deterministic_and_continue(algorithm):
    seed = new_seed()
    one, two = CipherStream(seed, algorithm), CipherStream(seed, algorithm)
    whole = one.read(1000)
    assert np.array_equal(np.concatenate([two.read(300), two.read(700)]), whole)
    assert not np.array_equal(CipherStream(new_seed(), algorithm).read(1000), whole)


@pytest.mark.parametrize("algorithm", ["aes_ctr", "chacha20"])
def test_a_read_with_data_is_the_keystream_xor_the_data(algorithm):
    """read_into(out, n, data) gives the next n keystream bytes XOR data and continues the stream
    exactly as a plain read would; too little data is refused."""
    seed, rng = new_seed(), np.random.default_rng(0)
    plain, mixed = CipherStream(seed, algorithm), CipherStream(seed, algorithm)
    data = rng.integers(0, 256, size=500, dtype=np.uint8)
    out = np.empty(500 + 15, np.uint8)
    mixed.read_into(out[:300 + 15], 300, data[:300])
    mixed.read_into(out[300:], 200, data[300:])
    assert np.array_equal(out[:500], plain.read(500) ^ data)
    assert np.array_equal(mixed.read(64), plain.read(64))
    with pytest.raises(ValueError):
        mixed.read_into(out, 100, data[:99])


@pytest.mark.parametrize("algorithm", ["aes_ctr", "chacha20"])
def test_reads_drawn_ahead_are_the_cipher_keystream_in_order(algorithm):
    """Small reads are served from keystream drawn ahead (READ_AHEAD_BYTES at a time): any mix of
    reads (small, odd-sized, across a block's end, larger than a block), reads into a buffer
    with and without data, int64 draws and seeks gives exactly the cipher's keystream, each
    byte once, in arrays of their own, and bytes_drawn counts what was handed out."""
    seed, rng = new_seed(), np.random.default_rng(1)
    stream = CipherStream(seed, algorithm)
    total = 6 * READ_AHEAD_BYTES
    keystream = np.frombuffer(stream._cipher(0).encryptor().update(bytes(total)), np.uint8)
    position, seeks = 0, 0
    while position < total - 3 * READ_AHEAD_BYTES:
        kind = rng.integers(0, 6)
        if kind == 5 and seeks < 3:  # skip ahead to an odd position
            seeks += 1
            position += int(rng.integers(0, 100))
            stream.seek(position)
        elif kind == 4:
            count = int(rng.integers(1, 300))
            drawn = stream.int64(count)
            assert drawn.ctypes.data % 8 == 0
            assert np.array_equal(drawn.view(np.uint8), keystream[position:position + 8 * count])
            position += 8 * count
        elif kind == 3:
            nbytes = int(rng.integers(1, 3000))
            out = np.empty(nbytes + 15, np.uint8)
            data = rng.integers(0, 256, nbytes, dtype=np.uint8) if rng.integers(0, 2) else None
            stream.read_into(out, nbytes, data)
            expected = keystream[position:position + nbytes]
            assert np.array_equal(out[:nbytes], expected if data is None else expected ^ data)
            position += nbytes
        else:
            nbytes = int(rng.choice([1, 7, 8, 500, 4096, READ_AHEAD_BYTES - 3, READ_AHEAD_BYTES + 9]))
            drawn = stream.read(nbytes)
            assert np.array_equal(drawn, keystream[position:position + nbytes])
            # the read's own memory: a tensor over it (saved whole) carries no other keystream
            assert drawn.base is None or drawn.base.nbytes <= nbytes + 15
            position += nbytes
        assert stream.bytes_drawn == position
    with pytest.raises(ValueError):
        stream.seek(position - 1)  # a stream never goes back, drawn ahead or not


@pytest.mark.parametrize("algorithm", ["aes_ctr", "chacha20"])
def test_ring_draws_are_the_keystream_whatever_the_size_is_given_as(algorithm):
    """ring() with a torch.Size (its short way) draws the same elements as with a tuple, a list
    or an int, and those are the keystream's bytes read into a caller's buffer."""
    seed = new_seed()
    pairs = [(torch.Size([3, 5]), (3, 5)), (torch.Size([3, 5]), [3, 5]), (torch.Size([15]), 15),
             (torch.Size([]), ()), (torch.Size([2, 2]), (torch.Size([2, 2]),))]
    by_size, by_other = CipherGenerator(seed, algorithm), CipherGenerator(seed, algorithm)
    stream = CipherGenerator(seed, algorithm).stream
    for size, other in pairs:
        drawn = by_size.ring(size)
        assert drawn.shape == size and torch.equal(drawn, by_other.ring(other))
        out = np.empty(8 * drawn.numel() + 15, np.uint8)
        stream.read_into(out, 8 * drawn.numel())
        assert np.array_equal(drawn.reshape(-1).numpy().view(np.uint8), out[:8 * drawn.numel()])
    assert by_size.stream.bytes_drawn == by_other.stream.bytes_drawn == stream.bytes_drawn


def test_algorithms_differ_and_seed_length_is_checked():
    seed = new_seed()
    assert CipherStream(seed, "aes_ctr").read(64).tobytes() != CipherStream(seed, "chacha20").read(64).tobytes()
    with pytest.raises(ValueError):
        CipherStream(b"short", "aes_ctr")
    with pytest.raises(ValueError):
        CipherStream(seed, "rc4")


@pytest.mark.parametrize("algorithm", ["aes_ctr", "chacha20"])
def test_ring_elements_are_uniform(algorithm):
    values = CipherGenerator(new_seed(), algorithm).ring((200_000,))
    assert values.dtype == torch.long
    bits = ((values.unsqueeze(1) >> torch.arange(64)) & 1).double().mean(0)
    assert torch.all((bits - 0.5).abs() < 0.01)  # every bit, the sign bit included, is fair
    small = CipherGenerator(new_seed(), algorithm).bits((10_000,), 5)
    assert small.min() >= 0 and small.max() < 32 and len(small.unique()) == 32


def test_generator_works_as_a_torch_generator():
    generator = CipherGenerator(new_seed())
    assert isinstance(generator, torch.Generator)
    assert torch.rand(3, generator=generator).shape == (3,)  # public uses such as dropout


def _seeds(crypten, rank):
    from protocols.prg import CipherGenerator

    gens = crypten.generators
    cpu = torch.device("cpu")
    assert all(isinstance(gens[key][cpu], CipherGenerator) for key in gens)
    draws = {key: gens[key][cpu].ring((4,)).tolist() for key in ("prev", "next", "local", "global")}
    zero = crypten.mpc.primitives.ArithmeticSharedTensor.PRZS((1000,)).share
    total = crypten.communicator.get().all_reduce(zero.clone())
    x = crypten.cryptensor(torch.arange(6.0))
    return {"draws": draws, "zero_sum": int(total.abs().max()), "x": x.get_plain_text().tolist(),
            "share": x.share.tolist()}


def test_pairwise_seeds_between_three_parties():
    protocol = ProtocolConfig(name="tfp", triple_source="tfp", prg="chacha20")
    p0, p1, p2 = party_values(run_parties(_seeds, protocol, parties=3), 3)
    assert p0["zero_sum"] == p1["zero_sum"] == 0  # pseudo-random zero sharings are zero
    assert p0["x"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    # each party's "next" seed is its successor's "prev" seed, and no one else's
    assert p0["draws"]["next"] == p1["draws"]["prev"]
    assert p1["draws"]["next"] == p2["draws"]["prev"]
    assert p2["draws"]["next"] == p0["draws"]["prev"]
    assert p0["draws"]["next"] not in [p2["draws"][key] for key in ("prev", "next", "local")]
    assert p0["draws"]["global"] == p1["draws"]["global"] == p2["draws"]["global"]
    assert len({str(p["draws"]["local"]) for p in (p0, p1, p2)}) == 3
    assert p0["share"] != p1["share"]


def test_benchmark_reports_rates(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "prg_bench.py"
    spec = importlib.util.spec_from_file_location("prg_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rates = bench.main(["--mb", "4", "--repeat", "1"])
    assert set(rates) == {"torch_mt19937", "aes_ctr", "chacha20"} and all(r > 0 for r in rates.values())
    assert "MB/s" in capsys.readouterr().out


def test_samplers_never_fall_back_to_torch_generators():
    from protocols.crypten_hooks import load_crypten
    from protocols.prg import NonCryptographicGenerator, cipher_rng_functions

    crypten = load_crypten()
    samplers = cipher_rng_functions(crypten)
    ring, kbit = samplers["generate_random_ring_element"], samplers["generate_kbit_random_tensor"]
    cipher = CipherGenerator(new_seed())
    assert ring((5,), generator=cipher).shape == (5,) and kbit((5,), bitlength=3, generator=cipher).max() < 8
    for sampler in (ring, kbit):
        with pytest.raises(NonCryptographicGenerator, match="not a cipher PRG generator"):
            sampler((5,), generator=torch.Generator())
        # before crypten.init the local generators are CrypTen's MT19937 ones: refused too
        with pytest.raises(NonCryptographicGenerator):
            sampler((5,))
    with pytest.raises(ValueError, match="Z_2\\^64 only"):
        ring((5,), ring_size=2**32, generator=cipher)
