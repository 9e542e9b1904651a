"""Explicit wire formats: msgpack for objects and headers, raw buffers for tensors.

Nothing received from a peer is unpickled. Objects are limited to msgpack's types
(None, bool, int, float, str, bytes, list, dict) and tensors; tensors travel as a header
naming dtype and shape plus their raw bytes (inside an object: a msgpack extension,
``TENSOR_EXT``, holding that header and those bytes).
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import torch

# dtypes that may cross the wire, by their wire name.
WIRE_DTYPES: dict[str, torch.dtype] = {
    "bool": torch.bool,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
_WIRE_NAMES = {dtype: name for name, dtype in WIRE_DTYPES.items()}


class WireError(RuntimeError):
    """A peer sent something that does not match the agreed wire format."""


def dtype_name(dtype: torch.dtype) -> str:
    try:
        return _WIRE_NAMES[dtype]
    except KeyError:
        raise WireError(f"dtype {dtype} cannot be sent on the wire") from None


def dtype_from_name(name: Any, peer: str) -> torch.dtype:
    if name not in WIRE_DTYPES:
        raise WireError(f"{peer} sent unknown dtype {name!r}")
    return WIRE_DTYPES[name]


def byte_view(tensor: torch.Tensor) -> torch.Tensor:
    """The memory of a contiguous CPU tensor as a 1-D uint8 tensor (writable, shared).

    A contiguous tensor may still have stride 0 on its dimensions of size 1 (``expand`` makes
    them, and ``contiguous()`` and ``empty_like`` keep them), where ``reshape(-1).view(uint8)``
    refuses; its elements are consecutive all the same.
    """
    return tensor.as_strided((tensor.numel(),), (1,)).view(torch.uint8)


TENSOR_EXT = 1  # msgpack extension code of a tensor inside an object


def _extension(obj: Any) -> msgpack.ExtType:
    """What msgpack calls for a value it has no type for: a tensor becomes an extension; anything
    else is refused. (Tuples and torch.Size it packs as lists itself, without a Python call per
    item: a dealer request holds a few hundred.)"""
    if torch.is_tensor(obj):
        return tensor_ext(obj)
    raise TypeError(
        f"cannot send object of type {type(obj).__name__}: only msgpack types "
        "(None, bool, int, float, str, bytes, list, dict) and tensors travel between parties"
    )


def tensor_ext(tensor: torch.Tensor) -> msgpack.ExtType:
    """[dtype, shape] as msgpack, then the raw bytes (C order; on the host)."""
    host = tensor.detach().cpu().contiguous()
    header = msgpack.packb([dtype_name(host.dtype), list(host.shape)])
    return msgpack.ExtType(TENSOR_EXT, header + byte_view(host).numpy().tobytes())


def _tensor_from_ext(peer: str, code: int, data: bytes) -> torch.Tensor:
    if code != TENSOR_EXT:
        raise WireError(f"{peer} sent an object with unknown extension type {code}")
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(data))
    unpacker.feed(data)
    header = next(unpacker, None)
    if (type(header) is not list or len(header) != 2 or type(header[1]) is not list
            or not all(type(size) is int and size >= 0 for size in header[1])):
        raise WireError(f"{peer} sent a tensor with a malformed header {str(header)[:100]}")
    dtype = dtype_from_name(header[0], peer)
    payload = data[unpacker.tell():]
    count = math.prod(header[1])
    if len(payload) != count * dtype.itemsize:
        raise WireError(f"{peer} sent a {header[0]} tensor of shape {header[1]} in {len(payload)} bytes")
    if not count:
        return torch.empty(header[1], dtype=dtype)
    return torch.frombuffer(bytearray(payload), dtype=dtype).reshape(header[1])


def pack_object(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, default=_extension)


def unpack_object(data: bytes, peer: str, max_bytes: int) -> Any:
    if len(data) > max_bytes:
        raise WireError(f"{peer} sent an object of {len(data)} bytes, over the limit {max_bytes}")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False,
                               ext_hook=lambda code, payload: _tensor_from_ext(peer, code, payload))
    except (msgpack.UnpackException, ValueError) as error:
        raise WireError(f"{peer} sent a malformed object: {error}") from None


def tensor_nbytes(tensor: torch.Tensor) -> int:
    return tensor.nelement() * tensor.element_size()
