"""0/1 tensors packed 64 to an int64 word for the wire, and words unpacked into their bits:
the packed comparison's AND gates and B2A openings, and topbits truncation's swapped bits."""

from __future__ import annotations

import torch

_POSITIONS = torch.arange(64)


def unpack_words(words: torch.Tensor) -> torch.Tensor:
    """(N,) int64 -> (N, 64) of 0/1, bit j in column j (XOR sharings stay XOR sharings)."""
    return (words.unsqueeze(-1) >> _POSITIONS.to(words.device)) & 1


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """(k,) of 0/1 -> ceil(k/64) int64 words, bit j of the sequence at bit j % 64 of word j // 64."""
    padded = torch.nn.functional.pad(bits, (0, -bits.numel() % 64)).reshape(-1, 64)
    return (padded << _POSITIONS.to(bits.device)).sum(-1)


def unpack_bits(words: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_bits` for bits shaped as ``like``."""
    return unpack_words(words).reshape(-1)[: like.numel()].reshape(like.shape)
