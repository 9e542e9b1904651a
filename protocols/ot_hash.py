"""The OT extension's correlation-robust hash: fixed-key AES, fused with the bit transposition.

IKNP makes its OTs as 128 bit columns (one per base OT) and hashes them as rows (one 128-bit
row x per OT). The hash of OT number j, block b (``words`` 64-bit words per OT, two per
block) is

    H(j, b, x) = pi(sigma(x) ^ t) ^ sigma(x) ^ t,  t = (j, b + 1),

with pi AES-128 under a fixed public key and sigma(x_L, x_R) = (x_L ^ x_R, x_L) the
orthomorphism of Guo et al. (fixed-key MMO; x_L the low 64 bits of the row). A numba kernel
reads a block's columns into a tile, transposes all its 64 x 64 bit matrices at once (stage by
stage, vectorised across them), applies sigma and the tweaks and writes the AES input for a
block of OTs that stays in cache; one AES-ECB call (AES-NI) hashes the block.
"""

from __future__ import annotations

import hashlib

import numba
import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KAPPA = 128
HASH_KEY = hashlib.sha256(b"cotrain-ot-fixed-key").digest()[:16]
# AES input per call, in bytes: small enough to stay in the core's cache
_BLOCK_BYTES = 1 << 18
_SWAP_MASKS = np.array([0x00000000FFFFFFFF, 0x0000FFFF0000FFFF, 0x00FF00FF00FF00FF,
                        0x0F0F0F0F0F0F0F0F, 0x3333333333333333, 0x5555555555555555], dtype=np.uint64)


@numba.njit(nogil=True, cache=True)
def _transpose_tile(tile: np.ndarray) -> None:
    """In place, for every word column w of a (128, words) tile: bit c of tile[t, w] becomes bit t
    of tile[c, w], in each of the two 64 x 64 bit matrices (rows 0-63 and 64-127).

    Six stages swap ever smaller off-diagonal blocks (Eklundh), each applied to whole rows at
    once: the innermost loop runs along a row's words, contiguous and branch-free, so it
    vectorises across matrices (one 64 x 64 transpose at a time would run scalar)."""
    j = 32
    for stage in range(6):
        mask = _SWAP_MASKS[stage]
        shift = np.uint64(j)
        for base in range(0, KAPPA, 2 * j):
            for k in range(base, base + j):
                upper, lower = tile[k], tile[k + j]
                for w in range(tile.shape[1]):
                    t = ((upper[w] >> shift) ^ lower[w]) & mask
                    lower[w] ^= t
                    upper[w] ^= t << shift
        j //= 2


@numba.njit(nogil=True, cache=True)
def _hash_inputs(columns: np.ndarray, first: int, count: int, index0: np.uint64, blocks: int, offset: np.ndarray,
                 out: np.ndarray) -> None:
    """AES inputs sigma(x) ^ (j, b + 1) for OTs first..first+count-1 of the columns ((128, w)
    uint64, OT t in bit t % 64 of word t // 64). ``out`` is (copies, count, 2 * blocks)
    uint64; copy 1, if there, hashes x ^ s, where ``offset`` = sigma(s) (sigma is linear).
    """
    two, end = out.shape[0] == 2, first + count
    offset0, offset1 = offset[0], offset[1]
    start_word, end_word = first // 64, (end + 63) // 64
    # the block's words, column by column: long sequential reads (short or strided ones from 128
    # columns defeat the prefetcher: the columns are far larger than the cache)
    tile = np.empty((KAPPA, end_word - start_word), np.uint64)
    for c in range(KAPPA):
        for word in range(start_word, end_word):
            tile[c, word - start_word] = columns[c, word]
    _transpose_tile(tile)  # tile[t, w]: the low half of OT 64 (start_word + w) + t; tile[64 + t, w] its high
    for word in range(start_word, end_word):
        base, w = 64 * word - first, word - start_word
        for bit in range(max(-base, 0), min(end - 64 * word, 64)):
            row = base + bit
            low = tile[bit, w]
            left, right = low ^ tile[64 + bit, w] ^ (index0 + np.uint64(row)), low
            for b in range(blocks):
                out[0, row, 2 * b] = left
                out[0, row, 2 * b + 1] = right ^ np.uint64(b + 1)
                if two:
                    out[1, row, 2 * b] = left ^ offset0
                    out[1, row, 2 * b + 1] = right ^ offset1 ^ np.uint64(b + 1)


_NO_OFFSET = np.zeros(2, np.uint64)


def sigma(row: np.ndarray) -> np.ndarray:
    """sigma of one 128-bit row ((16,) uint8) as (2,) uint64."""
    low, high = row.view(np.uint64)
    return np.array([low ^ high, low], dtype=np.uint64)


class CrHash:
    """Pads H(j, b, x) for blocks of OTs; owns its AES context and buffers (reused per call)."""

    def __init__(self) -> None:
        self._encryptor = Cipher(algorithms.AES(HASH_KEY), modes.ECB()).encryptor()
        self._input = np.empty(0, np.uint64)
        self._output = np.empty(0, np.uint8)

    @staticmethod
    def block_ots(words: int, copies: int) -> int:
        """OTs per call for pads of ``words`` words: a multiple of 64 that keeps the AES input near
        ``_BLOCK_BYTES`` (at least 64 OTs)."""
        per_ot = 16 * ((words + 1) // 2) * copies
        return max(64, _BLOCK_BYTES // per_ot // 64 * 64)

    def pads(self, columns: np.ndarray, first: int, count: int, index0: int, words: int,
             offset: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The pads of OTs first.. as two (copies, count, 2 * blocks) uint64 arrays, AES(input) and
        input, whose XOR over the first ``words`` words is the pad (copies 2 with ``offset`` =
        sigma(s): the second hashes x ^ s). The kernels that use the pads XOR the two as they
        read them (one pass over memory fewer). Views of this object's buffers, valid until the
        next call."""
        copies, blocks = (1 if offset is None else 2), (words + 1) // 2
        size = copies * count * 2 * blocks
        if len(self._input) < size:
            self._input = np.empty(size, np.uint64)
            self._output = np.empty(8 * size + 15, np.uint8)  # update_into wants block_size-1 spare bytes
        tweaked = self._input[:size].reshape(copies, count, 2 * blocks)
        _hash_inputs(columns, first, count, np.uint64(index0), blocks, _NO_OFFSET if offset is None else offset,
                     tweaked)
        self._encryptor.update_into(tweaked.reshape(-1).view(np.uint8), self._output)
        return self._output[: 8 * size].view(np.uint64).reshape(tweaked.shape), tweaked
