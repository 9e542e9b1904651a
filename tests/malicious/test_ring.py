"""Z_2^128 limb arithmetic against Python big integers, exactly."""

import random

import numpy as np
import pytest

from protocols.malicious import ring
from protocols.malicious.ring import MOD, U128

EDGE = [0, 1, 2, (1 << 32) - 1, 1 << 32, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, 1 << 64,
        (1 << 64) + 1, (1 << 96) - 1, (1 << 127), MOD - 1, MOD - 2]


def _values(rng: random.Random, count: int) -> list[int]:
    out = list(EDGE)
    while len(out) < count:
        kind = rng.randrange(4)
        if kind == 0:
            out.append(rng.getrandbits(128))
        elif kind == 1:
            out.append(rng.getrandbits(64))
        elif kind == 2:
            out.append((MOD - rng.getrandbits(rng.randrange(1, 128))) % MOD)
        else:
            out.append(1 << rng.randrange(128))
    rng.shuffle(out)
    return out[:count]


@pytest.mark.parametrize("seed", range(3))
def test_elementwise_ops_match_bigints(seed):
    rng = random.Random(seed)
    a, b = _values(rng, 400), _values(rng, 400)
    x, y = U128.from_ints(a), U128.from_ints(b)
    assert x.to_ints() == a
    assert (x + y).to_ints() == [(p + q) % MOD for p, q in zip(a, b)]
    assert (x - y).to_ints() == [(p - q) % MOD for p, q in zip(a, b)]
    assert (-x).to_ints() == [(-p) % MOD for p in a]
    assert (x * y).to_ints() == [(p * q) % MOD for p, q in zip(a, b)]
    for bits in (0, 1, 16, 63, 64, 65, 127):
        assert x.shl(bits).to_ints() == [(p << bits) % MOD for p in a]
    c = rng.getrandbits(128)
    assert (x * U128.scalar(c)).to_ints() == [(p * c) % MOD for p in a]


def test_sign_extension_and_low_limb():
    values = np.array([0, 1, -1, -(1 << 63), (1 << 63) - 1, 12345, -98765], dtype=np.int64)
    x = U128.from_int64(values)
    assert x.to_ints() == [int(v) % MOD for v in values]
    assert np.array_equal(x.low_int64(), values)


@pytest.mark.parametrize("seed", range(3))
def test_sum_and_matmul_match_bigints(seed):
    rng = random.Random(100 + seed)
    n, d, m = 7, 13, 3
    a = _values(rng, n * d)
    b = _values(rng, d * m)
    x, y = U128.from_ints(a, (n, d)), U128.from_ints(b, (d, m))
    sums = ring.sum_axis(x, 1).to_ints()
    assert sums == [sum(a[i * d:(i + 1) * d]) % MOD for i in range(n)]
    sums0 = ring.sum_axis(x, 0).to_ints()
    assert sums0 == [sum(a[i * d + j] for i in range(n)) % MOD for j in range(d)]
    expected = [sum(a[i * d + k] * b[k * m + j] for k in range(d)) % MOD for i in range(n) for j in range(m)]
    assert ring.matmul(x, y).to_ints() == expected
    assert ring.matmul(x, y, chunk_elements=5).to_ints() == expected  # chunked rows


def test_many_terms_carry():
    x = U128.from_ints([MOD - 1] * 5000)
    assert ring.sum_axis(x, 0).to_ints() == [(5000 * (MOD - 1)) % MOD]


def test_wire_roundtrip():
    x = U128.random((4, 5))
    assert ring.from_wire(ring.to_wire(x), (4, 5)) == x
    parts = [U128.random((2, 3)), U128.random((4,))]
    back = ring.split(ring.concat(parts), [(2, 3), (4,)])
    assert back[0] == parts[0] and back[1] == parts[1]


def test_low_limb_wire():
    x = U128.random((3, 2))
    back = ring.from_wire(ring.to_wire(x, limbs=1), (3, 2), limbs=1)
    assert np.array_equal(back.lo, x.lo) and not back.hi.any()


def _draw_in_child(queue) -> None:
    queue.put(ring.random_bytes(64).tobytes())


def test_random_bytes_differ_in_a_forked_child():
    # the keystream is keyed once per process: a child forked after the parent drew must
    # not repeat the parent's next bytes (or the dealer's shares would repeat)
    import multiprocessing

    ring.random_bytes(16)  # the parent's stream exists before the fork
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_draw_in_child, args=(queue,))
    child.start()
    drawn = queue.get(timeout=60)
    child.join(60)
    assert drawn != ring.random_bytes(64).tobytes()
    assert len(set(ring.random_bytes(1 << 16).tobytes())) == 256  # every byte value turns up
