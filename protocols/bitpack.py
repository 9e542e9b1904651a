"""Small fields packed into int64 words for the wire, and the bit order of whole words: the
packed comparison's AND gates and B2A openings, and topbits truncation's swapped bits."""

from __future__ import annotations

import functools

import torch

EVEN_BITS = 0x5555555555555555
# Index bits (a, b) exchanged, as (distance 2^a - 2^b, the positions with bit a clear and
# bit b set): three such swaps reverse a position's 6-bit index
_INDEX_SWAPS = tuple(((1 << a) - (1 << b), sum(1 << p for p in range(64) if not p >> a & 1 and p >> b & 1))
                     for a, b in ((5, 0), (4, 1), (3, 2)))


def pack_fields(values: torch.Tensor, width: int) -> torch.Tensor:
    """(..., k) values below 2^width (width dividing 64) -> (..., ceil(k / (64 / width))) int64
    words, each row on its own: value j in bits [width * (j % n), width * (j % n + 1)) of word
    j // n, n = 64 / width."""
    per_word = 64 // width
    if per_word == 1:
        return values
    padded = torch.nn.functional.pad(values, (0, -values.shape[-1] % per_word))
    return (padded.reshape(*values.shape[:-1], -1, per_word) << _field_shifts(width, values.device)).sum(-1)


def unpack_fields(words: torch.Tensor, width: int, count: int) -> torch.Tensor:
    """The inverse of :func:`pack_fields`: the first ``count`` values of each row."""
    per_word = 64 // width
    if per_word == 1:
        return words[..., :count]
    shifts = _field_shifts(width, words.device)
    return ((words.unsqueeze(-1) >> shifts) & ((1 << width) - 1)).flatten(-2)[..., :count]


@functools.lru_cache(maxsize=None)  # made once per width and device: the comparisons pack every step
def _field_shifts(width: int, device: torch.device) -> torch.Tensor:
    return torch.arange(0, 64, width, device=device)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """(k,) of 0/1 -> ceil(k/64) int64 words, bit j of the sequence at bit j % 64 of word j // 64."""
    return pack_fields(bits, 1)


def unpack_bits(words: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_bits` for bits shaped as ``like``."""
    return unpack_fields(words, 1, like.numel()).reshape(like.shape)


def pair_products(words: torch.Tensor) -> torch.Tensor:
    """Bit 2i + 1 AND bit 2i of each word, at bit 2i (odd bits 0): with a sign mask, they make
    the packed comparison's first tree level local."""
    return (words >> 1) & words & EVEN_BITS


def reverse_bit_indices(words: torch.Tensor) -> torch.Tensor:
    """Each int64 word with bit j moved to bit rev(j), rev reversing the 6 bits of the index
    (bit 1 to 32, 2 to 16, 3 to 48). A permutation of positions, so XOR sharings stay XOR
    sharings; it puts bits 2i and 2i + 1 in the same place of the low and the high half."""
    for distance, low in _INDEX_SWAPS:
        moved = ((words >> distance) ^ words) & low
        words = words ^ moved ^ (moved << distance)
    return words
