"""Bit-matrix transposition for OT extension, compiled with numba.

IKNP makes its OTs as 128 bit columns (one per base OT) and hashes them as rows (one
128-bit row per OT). The transposition touches every bit of every OT; in numpy it takes a
dozen passes over the data, compiled it takes one.
"""

from __future__ import annotations

import numba
import numpy as np

KAPPA = 128
_MASKS = (np.uint64(0x00AA00AA00AA00AA), np.uint64(0x0000CCCC0000CCCC), np.uint64(0x00000000F0F0F0F0))


@numba.njit(nogil=True, cache=True)
def _transpose_words(words: np.ndarray, out: np.ndarray) -> None:
    # words: (128, w) uint64, bit j of word b of column i = OT 64b + j, column i.
    # out: (64 w, 16) uint8, byte g of row t = columns 8g..8g+7 of OT t.
    m1, m2, m3 = _MASKS
    ff = np.uint64(0xFF)
    for block in range(words.shape[1]):
        for group in range(16):
            column = 8 * group
            w0, w1, w2, w3 = words[column, block], words[column + 1, block], words[column + 2, block], words[column + 3, block]
            w4, w5, w6, w7 = words[column + 4, block], words[column + 5, block], words[column + 6, block], words[column + 7, block]
            for byte in range(8):
                shift = np.uint64(8 * byte)
                # an 8x8 bit tile: byte c holds OTs 64 block + 8 byte .. +7 of column 8 group + c
                x = (((w0 >> shift) & ff) | (((w1 >> shift) & ff) << np.uint64(8))
                     | (((w2 >> shift) & ff) << np.uint64(16)) | (((w3 >> shift) & ff) << np.uint64(24))
                     | (((w4 >> shift) & ff) << np.uint64(32)) | (((w5 >> shift) & ff) << np.uint64(40))
                     | (((w6 >> shift) & ff) << np.uint64(48)) | (((w7 >> shift) & ff) << np.uint64(56)))
                t = (x ^ (x >> np.uint64(7))) & m1
                x = x ^ t ^ (t << np.uint64(7))
                t = (x ^ (x >> np.uint64(14))) & m2
                x = x ^ t ^ (t << np.uint64(14))
                t = (x ^ (x >> np.uint64(28))) & m3
                x = x ^ t ^ (t << np.uint64(28))
                row = 64 * block + 8 * byte
                for k in range(8):
                    out[row + k, group] = np.uint8((x >> np.uint64(8 * k)) & ff)


def transpose_bits(columns: np.ndarray, count: int) -> np.ndarray:
    """(128, w) uint8 bit columns (OT t is bit t % 8 of byte t // 8) to (count, 16) uint8 rows.

    ``w`` must be a multiple of 8 (whole 64-bit words per column).
    """
    if columns.shape[0] != KAPPA or columns.shape[1] % 8 or count > 8 * columns.shape[1]:
        raise ValueError(f"cannot transpose bit columns of shape {columns.shape} into {count} rows")
    words = columns.view(np.uint64)  # each column (row of the array) contiguous; rows may be padded apart
    out = np.empty((8 * columns.shape[1], 16), dtype=np.uint8)
    _transpose_words(words, out)
    return out[:count]
