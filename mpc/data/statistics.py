"""Exact column statistics: pooled over a horizontal split, or one party's own.

Method: two passes with a public shift, each pass an exact secure sum.

1. Each party sums its own columns in float64 (and counts its positive labels); a secure sum
   reveals only the pooled sums, hence the pooled mean ``m`` (row counts are public metadata).
2. Each party sums ``(x - m)^2`` over its own rows in float64; a second secure sum reveals
   the pooled sum of squared deviations, hence the pooled (population) standard deviation.

Why this method: the one-pass form ``mean(x^2) - m^2`` cancels catastrophically. For a
timestamp (``m`` about 1.7e9, std about 1e3) the two terms agree to 12 digits, which neither
CrypTen's 16 fractional bits nor float64 can carry. Subtracting the public mean first leaves
sums of non-negative terms, so each party's float64 sum is accurate to a few units of 2^-53
relative, whatever the ratio of std to mean. A shift error d in ``m`` (float64 rounding, at
most a few 1e-16 |m|) adds exactly d^2 to the variance: below 1e-14 relative for any column
with std >= 1e-6 |m|. Per-column powers of two or a wider one-pass accumulation would need
exact squares (106-bit products) at every party; the shift needs only float64.

The secure sums must then lose nothing, so they run on integers, not on CrypTen's 16-bit
encoding: every float64 is encoded as ``round_toward_zero(v * 2^128)`` in the ring Z_2^256
(exact for |v| >= 2^-75; smaller values lose less than 2^-128), far wider than any sum here
needs (|x| <= 2^40 by the range guard, so sums of x and of (x - m)^2 stay below 2^127, the
ring's signed range, for up to 2^45 rows).
Each party splits its vector into additive shares with masks from ``secrets`` (a CSPRNG),
sends one share to every other party over the (encrypted) transport, and publishes the sum
of the shares it holds; the published partial sums are uniform apart from their total, so
only the pooled sums are revealed. Python integers carry the 256-bit ring without limbs. The
revealed total is rounded once to float64, so the statistics match a float64 computation on
the pooled table up to float64 summation error (about 1e-15 relative to the column's
magnitude; tested within 1e-6 relative on real-shaped tables).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from mpc import release
from mpc.data.exchange import exchange

RING_BITS = 256
FRACTION_BITS = 128
_MODULUS = 1 << RING_BITS
_ELEMENT_BYTES = RING_BITS // 8

# a column whose std is at most this fraction of |mean| (std 0 included) is constant: float64
# rounding of a truly constant column leaves a std of a few 1e-16 |mean|, while columns the
# statistics support exactly go down to std = 1e-6 |mean|
CONSTANT_RELATIVE_STD = 1e-10


@dataclass
class ColumnStatistics:
    """Float64 mean and population std per column, and the count of positive labels."""

    mean: np.ndarray
    std: np.ndarray
    positives: int


def encode(value: float) -> int:
    """A float64 as a ring element with FRACTION_BITS fractional bits."""
    return int(value * 2.0**FRACTION_BITS) % _MODULUS


def decode(element: int) -> float:
    """A ring element back to the nearest float64 (correctly rounded)."""
    signed = element - _MODULUS if element >= _MODULUS // 2 else element
    return signed / (1 << FRACTION_BITS)


def _to_wire(elements: Sequence[int]) -> list[bytes]:
    return [element.to_bytes(_ELEMENT_BYTES, "little") for element in elements]


def _from_wire(message: Any, count: int, peer: int) -> list[int]:
    if (not isinstance(message, list) or len(message) != count
            or not all(isinstance(item, bytes) and len(item) == _ELEMENT_BYTES for item in message)):
        raise ValueError(f"secure sum: party rank {peer} sent a malformed message "
                         f"(expected {count} ring elements of {_ELEMENT_BYTES} bytes)")
    return [int.from_bytes(item, "little") for item in message]


def secure_sum(comm: Any, values: Sequence[float]) -> list[float]:
    """The sum over all parties of each party's ``values`` (same length everywhere), exactly.

    Each party learns the pooled sums and nothing else about another party's values.
    """
    rank, world = comm.get_rank(), comm.get_world_size()
    count = len(values)
    own = [encode(float(v)) for v in values]
    masks = {peer: [secrets.randbits(RING_BITS) for _ in range(count)] for peer in range(world) if peer != rank}
    held = [(v - sum(mask[i] for mask in masks.values())) % _MODULUS for i, v in enumerate(own)]

    def receive(peer: int) -> None:
        for i, share in enumerate(_from_wire(comm.recv_obj(peer), count, peer)):
            held[i] = (held[i] + share) % _MODULUS

    # one fixed global order of pairs, lower rank sending first: no cycle of blocking sends
    for low in range(world):
        for high in range(low + 1, world):
            if rank == low:
                comm.send_obj(_to_wire(masks[high]), high)
                receive(high)
            elif rank == high:
                receive(low)
                comm.send_obj(_to_wire(masks[low]), low)
    partials = exchange(comm, {"partial": _to_wire(held)})
    totals = [0] * count
    for peer, message in enumerate(partials):
        for i, share in enumerate(_from_wire(message.get("partial"), count, peer)):
            totals[i] = (totals[i] + share) % _MODULUS
    return [decode(total) for total in totals]


def _squared_deviations(values: np.ndarray, mean: np.ndarray) -> np.ndarray:
    return ((values - mean) ** 2).sum(0)


def pooled_statistics(comm: Any, values: np.ndarray, labels: np.ndarray, total_rows: int) -> ColumnStatistics:
    """Pooled column statistics of every party's ``values`` (rows x columns, float64)."""
    width = values.shape[1]
    # the column sums and the positive count, then the squared deviations: the scaling statistics
    sums = release.open_with(lambda: secure_sum(comm, [*values.sum(0), float(labels.sum())]), "scaling_statistics")
    mean = np.asarray(sums[:width]) / total_rows
    squares = release.open_with(lambda: secure_sum(comm, list(_squared_deviations(values, mean))), "scaling_statistics")
    std = np.sqrt(np.maximum(np.asarray(squares), 0.0) / total_rows)
    return ColumnStatistics(mean, std, int(round(sums[width])))


def local_statistics(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std of one party's own columns, by the same two-pass formula."""
    mean = values.mean(0)
    return mean, np.sqrt(_squared_deviations(values, mean) / len(values))


def constant_columns(names: Sequence[str], mean: np.ndarray, std: np.ndarray) -> list[str]:
    """The columns that carry no information (std <= CONSTANT_RELATIVE_STD * |mean|)."""
    return [name for name, m, s in zip(names, mean, std) if s <= CONSTANT_RELATIVE_STD * abs(m)]
