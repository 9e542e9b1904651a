"""The binary header of a tensor message: op, sender, sequence number, each tensor's dtype and shape.

A fixed little-endian layout (no msgpack, nothing unpickled)::

    op u8 | sender u16 | seq u64 | tensors u16 | per tensor: dtype u8 | ndim u8 | ndim x u64 sizes

A receiver builds the header it expects (the same way, from the tensors it receives into) and
compares bytes: the common case costs one comparison, where decoding a msgpack map and checking
its fields cost tens of microseconds of Python per message. Only a header that differs is
decoded (:func:`decode`, which checks every length) to say what differed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch

from parties.transport.wire import WIRE_DTYPES, WireError

# every op a tensor message may carry, by its code on the wire
OPS = ("hello", "bye", "p2p", "scatter", "reduce", "all_reduce", "gather", "all_gather", "broadcast", "barrier")
_OP_CODES = {name: code for code, name in enumerate(OPS)}
BYE = _OP_CODES["bye"]
_DTYPE_NAMES = tuple(WIRE_DTYPES)
_DTYPE_CODES = {dtype: code for code, dtype in enumerate(WIRE_DTYPES.values())}

FIXED = struct.Struct("<BHQH")  # op, sender, seq, tensor count
MAX_TENSORS = 0xFFFF
_TENSOR = struct.Struct("<BB")  # dtype, ndim


@lru_cache(maxsize=None)
def _described(ndim: int) -> struct.Struct:
    """dtype, ndim and the sizes of a tensor of ``ndim`` dimensions."""
    return struct.Struct(f"<BB{ndim}Q")


def encode(op: str, seq: int, sender: int, tensors: Sequence[torch.Tensor]) -> bytes:
    """The header of a message of ``tensors``."""
    if len(tensors) > MAX_TENSORS:
        raise WireError(f"a message of {len(tensors)} tensors; at most {MAX_TENSORS} travel together")
    head = FIXED.pack(_OP_CODES[op], sender, seq, len(tensors))
    for tensor in tensors:
        shape = tensor.shape
        try:
            code = _DTYPE_CODES[tensor.dtype]
        except KeyError:
            raise WireError(f"dtype {tensor.dtype} cannot be sent on the wire") from None
        head += _described(len(shape)).pack(code, len(shape), *shape)
    return head


def op_name(code: int) -> str:
    """An op code as its name, for messages (a peer may send any byte)."""
    return OPS[code] if code < len(OPS) else f"unknown op {code}"


@dataclass(frozen=True)
class Header:
    op: str
    sender: int
    seq: int
    dtypes: list[str]
    shapes: list[list[int]]


def decode(data: bytes, peer: str) -> Header:
    """A header's fields, refusing one whose lengths or codes do not add up."""
    if len(data) < FIXED.size:
        raise WireError(f"{peer} sent a malformed header: {len(data)} bytes, fewer than {FIXED.size}")
    op, sender, seq, count = FIXED.unpack_from(data)
    if op >= len(OPS):
        raise WireError(f"{peer} sent a malformed header: unknown op code {op}")
    dtypes, shapes, offset = [], [], FIXED.size
    for _ in range(count):
        if offset + _TENSOR.size > len(data):
            raise WireError(f"{peer} sent a malformed header: it ends inside its tensor list")
        code, ndim = _TENSOR.unpack_from(data, offset)
        if code >= len(_DTYPE_NAMES):
            raise WireError(f"{peer} sent unknown dtype code {code}")
        described = _described(ndim)
        if offset + described.size > len(data):
            raise WireError(f"{peer} sent a malformed header: it ends inside a shape")
        dtypes.append(_DTYPE_NAMES[code])
        shapes.append(list(described.unpack_from(data, offset)[2:]))
        offset += described.size
    if offset != len(data):
        raise WireError(f"{peer} sent a malformed header: {len(data) - offset} bytes after its tensor list")
    return Header(OPS[op], sender, seq, dtypes, shapes)
