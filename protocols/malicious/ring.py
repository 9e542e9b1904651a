"""Exact arithmetic in Z_2^128 on numpy, as pairs of uint64 limbs.

Representation
--------------
A tensor of ring elements is a :class:`U128`: two ``numpy.uint64`` arrays of the same
shape, ``lo`` (bits 0..63) and ``hi`` (bits 64..127); the element is ``hi * 2**64 + lo``.
numpy's uint64 arithmetic on arrays wraps modulo 2^64, so every operation below is the
limb-wise schoolbook algorithm with explicit carries:

* addition: ``lo = a.lo + b.lo``; the carry is ``lo < a.lo``; ``hi = a.hi + b.hi + carry``
  (one numba ufunc, like subtraction's borrow).
* multiplication mod 2^128: the low limb is numpy's wrapping ``a.lo * b.lo``; the high limb
  is the high half of that 64x64-bit product, built from four 32x32-bit partial products
  (each fits in 64 bits, their middle sum fits too), plus the cross terms
  ``a.lo*b.hi + a.hi*b.lo``, which only reach the high limb, so wrapping 64-bit products are
  exact there. The high limb is one numba ufunc (compiled, so the partial products make no
  temporary arrays; numpy's broadcasting applies as to any ufunc).
* sums along an axis split the low limb into 32-bit halves (no overflow for fewer than
  2^32 terms) and recombine them with a carry into the high limb.
* a matrix product (batched over leading dimensions) is a broadcast elementwise product
  summed along the inner axis (chunked to bound memory); a convolution is each group's
  kernel matrix times the input's patches.

Signed 64-bit values (CrypTen's ring and fixed-point encoding) enter by sign extension, so
the low limb of any result is exactly the int64 arithmetic result. ``tests/malicious``
checks every operation against Python's big integers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import numba
import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MASK32 = np.uint64(0xFFFFFFFF)
SHIFT32 = np.uint64(32)
MOD = 1 << 128
MASK64_INT = (1 << 64) - 1

_keystream: tuple[int, object] | None = None  # (process id, AES-CTR encryptor)


def random_bytes(count: int) -> np.ndarray:
    """``count`` uniform bytes: AES-128-CTR keystream under a key from the OS CSPRNG (drawn
    once per process, again in a forked child, which must not repeat its parent's stream).
    os.urandom itself gives well under 100 MB/s here; the dealer draws gigabytes."""
    global _keystream
    if _keystream is None or _keystream[0] != os.getpid():
        _keystream = (os.getpid(), Cipher(algorithms.AES(os.urandom(16)), modes.CTR(bytes(16))).encryptor())
    return np.frombuffer(_keystream[1].update(bytes(count)), np.uint8)



@dataclass
class U128:
    lo: np.ndarray
    hi: np.ndarray

    # -- construction ---------------------------------------------------------------------
    @staticmethod
    def zeros(shape: Sequence[int] | int) -> "U128":
        return U128(np.zeros(shape, np.uint64), np.zeros(shape, np.uint64))

    @staticmethod
    def random(shape: Sequence[int] | int) -> "U128":
        """Uniform elements from a CSPRNG (``random_bytes``)."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        count = int(np.prod(shape, dtype=np.int64))
        raw = random_bytes(16 * count).view(np.uint64)
        return U128(raw[:count].reshape(shape).copy(), raw[count:].reshape(shape).copy())

    @staticmethod
    def from_int64(values: np.ndarray) -> "U128":
        """Sign-extend signed 64-bit integers."""
        values = np.asarray(values, dtype=np.int64)
        lo = values.view(np.uint64).copy()
        hi = np.where(values < 0, np.uint64(MASK64_INT), np.uint64(0)).astype(np.uint64)
        return U128(lo, hi)

    @staticmethod
    def from_uint64(values: np.ndarray) -> "U128":
        lo = np.asarray(values, dtype=np.uint64).copy()
        return U128(lo, np.zeros_like(lo))

    @staticmethod
    def from_ints(values: Iterable[int] | int, shape: Sequence[int] | None = None) -> "U128":
        """From Python integers (any size; reduced mod 2^128)."""
        flat = [values] if isinstance(values, int) else list(values)
        lo = np.array([v % MOD & MASK64_INT for v in flat], dtype=np.uint64)
        hi = np.array([(v % MOD) >> 64 for v in flat], dtype=np.uint64)
        if shape is not None:
            lo, hi = lo.reshape(shape), hi.reshape(shape)
        return U128(lo, hi)

    @staticmethod
    def scalar(value: int) -> "U128":
        """A shape-(1,) constant that broadcasts against any shape."""
        return U128.from_ints(value)

    def to_ints(self) -> list[int]:
        """Flattened Python integers in [0, 2^128)."""
        return [(int(h) << 64) | int(l) for l, h in zip(self.lo.ravel(), self.hi.ravel())]

    def low_int64(self) -> np.ndarray:
        """The element mod 2^64 as a signed 64-bit integer (two's complement)."""
        return self.lo.view(np.int64).copy()

    # -- shape ---------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.lo.shape

    @property
    def size(self) -> int:
        return int(self.lo.size)

    def reshape(self, *shape: int) -> "U128":
        return U128(self.lo.reshape(*shape), self.hi.reshape(*shape))

    def __getitem__(self, index) -> "U128":
        return U128(self.lo[index], self.hi[index])

    @property
    def T(self) -> "U128":
        return U128(self.lo.T, self.hi.T)

    def copy(self) -> "U128":
        return U128(self.lo.copy(), self.hi.copy())

    def broadcast_to(self, shape: Sequence[int]) -> "U128":
        return U128(np.broadcast_to(self.lo, shape).copy(), np.broadcast_to(self.hi, shape).copy())

    # -- arithmetic ------------------------------------------------------------------------
    def __add__(self, other: "U128") -> "U128":
        return U128(self.lo + other.lo, _sum_high(self.lo, self.hi, other.lo, other.hi))

    def __neg__(self) -> "U128":
        lo = ~self.lo + np.uint64(1)
        hi = ~self.hi + (lo == 0).astype(np.uint64)
        return U128(lo, hi)

    def __sub__(self, other: "U128") -> "U128":
        return U128(self.lo - other.lo, _difference_high(self.lo, self.hi, other.lo, other.hi))

    def __mul__(self, other: "U128") -> "U128":
        return mul(self, other)

    def __eq__(self, other: object) -> bool:  # whole-array equality
        return (isinstance(other, U128) and self.shape == other.shape
                and bool(np.array_equal(self.lo, other.lo)) and bool(np.array_equal(self.hi, other.hi)))

    def shl(self, bits: int) -> "U128":
        """Multiply by 2^bits (mod 2^128), 0 <= bits < 128."""
        if bits == 0:
            return self.copy()
        if bits >= 64:
            return U128(np.zeros_like(self.lo), self.lo << np.uint64(bits - 64))
        b = np.uint64(bits)
        return U128(self.lo << b, (self.hi << b) | (self.lo >> np.uint64(64 - bits)))

    def sum(self, axis: int) -> "U128":
        return sum_axis(self, axis)


@numba.vectorize(["uint64(uint64, uint64, uint64, uint64)"], cache=True)
def _sum_high(a_lo, a_hi, b_lo, b_hi):  # pragma: no cover - compiled
    """The high limb of a + b: the high limbs' sum and the carry out of the low limbs (one
    pass, where numpy makes a comparison, a cast and two sums)."""
    return a_hi + b_hi + numba.uint64(a_lo + b_lo < a_lo)


@numba.vectorize(["uint64(uint64, uint64, uint64, uint64)"], cache=True)
def _difference_high(a_lo, a_hi, b_lo, b_hi):  # pragma: no cover - compiled
    """The high limb of a - b: the high limbs' difference less the borrow of the low limbs."""
    return a_hi - b_hi - numba.uint64(a_lo < b_lo)


@numba.vectorize(["uint64(uint64, uint64, uint64, uint64)"], cache=True)
def _product_high(a_lo, a_hi, b_lo, b_hi):  # pragma: no cover - compiled
    """The high limb of (a_hi 2^64 + a_lo)(b_hi 2^64 + b_lo) mod 2^128."""
    mask = numba.uint64(0xFFFFFFFF)
    shift = numba.uint64(32)
    a0, a1 = a_lo & mask, a_lo >> shift
    b0, b1 = b_lo & mask, b_lo >> shift
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
    mid = (p00 >> shift) + (p01 & mask) + (p10 & mask)
    return p11 + (p01 >> shift) + (p10 >> shift) + (mid >> shift) + a_lo * b_hi + a_hi * b_lo


def mul(a: U128, b: U128) -> U128:
    """Elementwise product mod 2^128 (numpy broadcasting applies)."""
    return U128(a.lo * b.lo, _product_high(a.lo, a.hi, b.lo, b.hi))


def sum_axis(x: U128, axis: int) -> U128:
    """Sum along ``axis`` mod 2^128 (fewer than 2^32 terms)."""
    s0 = (x.lo & MASK32).sum(axis=axis, dtype=np.uint64)
    s1 = (x.lo >> SHIFT32).sum(axis=axis, dtype=np.uint64)
    hi = x.hi.sum(axis=axis, dtype=np.uint64)
    shifted = s1 << SHIFT32
    lo = s0 + shifted
    carry = (lo < shifted).astype(np.uint64)
    return U128(lo, hi + (s1 >> SHIFT32) + carry)


def matmul(a: U128, b: U128, chunk_elements: int = 1 << 21) -> U128:
    """(..., n, d) @ (..., d, m) mod 2^128, the leading (batch) dimensions equal."""
    *batch, n, d = a.shape
    *batch2, d2, m = b.shape
    if d != d2 or batch != batch2:
        raise ValueError(f"matmul shapes {a.shape} and {b.shape} do not match")
    count = int(np.prod(batch, dtype=np.int64))
    a3, b3 = a.reshape(count, n, d), b.reshape(count, d, m)
    out_lo = np.empty((count, n, m), np.uint64)
    out_hi = np.empty((count, n, m), np.uint64)
    # chunks of (batch, rows) with at most chunk_elements partial products each
    rows = max(1, min(n, chunk_elements // max(1, d * m)))
    batches = max(1, chunk_elements // max(1, n * d * m)) if rows == n else 1
    for first in range(0, count, batches):
        last = min(count, first + batches)
        bb = U128(b3.lo[first:last, None, :, :], b3.hi[first:last, None, :, :])
        for start in range(0, n, rows):
            block = a3[first:last, start:start + rows]
            total = sum_axis(mul(U128(block.lo[..., None], block.hi[..., None]), bb), -2)
            out_lo[first:last, start:start + rows] = total.lo
            out_hi[first:last, start:start + rows] = total.hi
    return U128(out_lo.reshape(*batch, n, m), out_hi.reshape(*batch, n, m))


def conv2d(x: U128, w: U128, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
           groups: int) -> U128:
    """torch's conv2d (no bias) mod 2^128: x (N, C, H, W), w (O, C / groups, kh, kw), as a
    product of each group's kernel matrix with the input's patches (zero padding)."""
    n, channels, _, _ = x.shape
    out_channels, per_group, kh, kw = w.shape
    pad = ((0, 0), (0, 0), (padding[0], padding[0]), (padding[1], padding[1]))
    lo, hi = np.pad(x.lo, pad), np.pad(x.hi, pad)
    out_h = (lo.shape[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (lo.shape[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    rows = (np.arange(kh) * dilation[0])[:, None] + (np.arange(out_h) * stride[0])[None, :]  # (kh, out_h)
    cols = (np.arange(kw) * dilation[1])[:, None] + (np.arange(out_w) * stride[1])[None, :]  # (kw, out_w)
    index = (slice(None), slice(None), rows[:, :, None, None], cols[None, None, :, :])  # -> (N, C, kh, oh, kw, ow)
    size = per_group * kh * kw

    def patches(limb: np.ndarray) -> np.ndarray:
        return limb[index].transpose(0, 1, 2, 4, 3, 5).reshape(n, groups, size, out_h * out_w)

    kernel = w.reshape(1, groups, out_channels // groups, size)
    kernel = U128(np.broadcast_to(kernel.lo, (n,) + kernel.shape[1:]), np.broadcast_to(kernel.hi, (n,) + kernel.shape[1:]))
    out = matmul(kernel, U128(patches(lo), patches(hi)))
    return out.reshape(n, out_channels, out_h, out_w)


def concat(parts: Sequence[U128]) -> U128:
    """Flattened concatenation."""
    return U128(np.concatenate([p.lo.ravel() for p in parts]), np.concatenate([p.hi.ravel() for p in parts]))


def split(flat: U128, shapes: Sequence[tuple[int, ...]]) -> list[U128]:
    out, start = [], 0
    for shape in shapes:
        count = int(np.prod(shape, dtype=np.int64))
        out.append(U128(flat.lo[start:start + count].reshape(shape), flat.hi[start:start + count].reshape(shape)))
        start += count
    return out


def wire_parts(x: U128, limbs: int = 2) -> list[np.ndarray]:
    """``to_wire``'s pieces, not yet joined (views where the limbs are contiguous), for a
    caller that joins many values into one buffer with a single copy."""
    return [x.lo.ravel()] if limbs == 1 else [x.lo.ravel(), x.hi.ravel()]


def to_wire(x: U128, limbs: int = 2) -> np.ndarray:
    """One contiguous uint64 buffer, lo limbs then hi limbs (``limbs=1``: the low limbs
    only, i.e. the value mod 2^64, for the semi-honest mode)."""
    if limbs == 1:
        return np.ascontiguousarray(x.lo.ravel())
    return np.concatenate(wire_parts(x, limbs))


def from_wire(buffer: np.ndarray, shape: Sequence[int], limbs: int = 2) -> U128:
    count = int(np.prod(shape, dtype=np.int64))
    buffer = np.asarray(buffer, dtype=np.uint64)
    if buffer.size != limbs * count:
        raise ValueError(f"expected {limbs * count} limbs, got {buffer.size}")
    if limbs == 1:
        return U128(buffer.reshape(shape).copy(), np.zeros(shape, np.uint64))
    return U128(buffer[:count].reshape(shape).copy(), buffer[count:].reshape(shape).copy())
