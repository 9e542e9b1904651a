"""``topbits`` truncation's two local passes on the CPU, compiled: one loop each, in place.

As torch expressions the two sides take some twenty operations over the shares, each making a
fresh temporary as large as the shares (8 MB per million elements); on these machines touching
fresh memory costs more than the arithmetic. Here each side reads its inputs once and writes
the share it was given: the arithmetic is that of ``protocols.truncation``'s
:func:`~protocols.truncation.top_bit_share` and :func:`~protocols.truncation.top_bit_finish`,
word for word in Z_2^64 (uint64 wraps as int64 does), and the tests hold both to the plaintext.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

_ONE = np.uint64(1)
_SIGN = np.uint64(63)
_SLOT = np.uint64(63)  # bit i of the packed words is bit i % 64 of word i // 64


@numba.njit(nogil=True, cache=True)
def _send(share: np.ndarray, mask: np.ndarray, own: np.ndarray, packed: np.ndarray, leader: bool) -> None:
    """share <- y = share +- mask (+ 2^62 at the leader); bit i of ``packed`` (zeroed) <- msb(y) XOR msb(own)."""
    offset = np.uint64(1 << 62)
    for i in range(share.shape[0]):
        y = share[i] + mask[i] + offset if leader else share[i] - mask[i]
        share[i] = y
        packed[i >> 6] |= ((y >> _SIGN) ^ (own[i] >> _SIGN)) << (np.uint64(i) & _SLOT)


@numba.njit(nogil=True, cache=True)
def _finish(y: np.ndarray, own: np.ndarray, and_share: np.ndarray, sent: np.ndarray, received: np.ndarray,
            k: int, leader: bool) -> None:
    """y <- this party's share of floor(x / 2^k) (or one more), as top_bit_finish."""
    shift, up = np.uint64(k), np.uint64(64 - k)
    low = (_ONE << shift) - _ONE
    offset = np.uint64((1 << 62) >> k)
    for i in range(y.shape[0]):
        word = y[i]
        place = np.uint64(i) & _SLOT
        p = (sent[i >> 6] >> place) & _ONE
        q = (received[i >> 6] >> place) & _ONE
        sign_p = _ONE - (p << _ONE)  # 1 - 2p: 1 or -1 in the ring
        wrap = (word >> _SIGN) - q * sign_p * (own[i] >> _SIGN) - sign_p * (_ONE - (q << _ONE)) * and_share[i]
        if leader:
            wrap -= p * q
        result = (word >> shift) - (wrap << up)
        if leader:
            result = result - offset + (_ONE if word & low else np.uint64(0))
        y[i] = result


def _words(tensor: torch.Tensor) -> np.ndarray:
    return tensor.numpy().view(np.uint64)


def send(share: torch.Tensor, mask: torch.Tensor, own_word: torch.Tensor,
         leader: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, the bits it sends, packed), as top_bit_share, but y is written over ``share``
    (contiguous CPU int64)."""
    packed = torch.zeros(-(-share.numel() // 64), dtype=torch.int64)
    _send(_words(share.view(-1)), _words(mask.reshape(-1)), _words(own_word.reshape(-1)), _words(packed), leader)
    return share, packed


def finish(y: torch.Tensor, own_word: torch.Tensor, and_share: torch.Tensor, sent: torch.Tensor,
           received: torch.Tensor, divisor: int, leader: bool) -> torch.Tensor:
    """Writes this party's share of floor(x / divisor) (or one more) over ``y`` and returns it."""
    _finish(_words(y.view(-1)), _words(own_word.reshape(-1)), _words(and_share.reshape(-1)), _words(sent),
            _words(received), divisor.bit_length() - 1, leader)
    return y


def warm_up() -> None:
    """Load the compiled kernels (from numba's cache after the first run on a machine) now,
    not inside the first division."""
    one = torch.zeros(1, dtype=torch.int64)
    for leader in (True, False):
        _, packed = send(one.clone(), one, one, leader)
        finish(one.clone(), one, one, packed, packed, 1 << 16, leader)
