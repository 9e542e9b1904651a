"""Explicit wire formats: msgpack for objects and headers, raw buffers for tensors.

Nothing received from a peer is unpickled. Objects are limited to msgpack's types
(None, bool, int, float, str, bytes, list, dict); tensors travel as a header naming dtype
and shape plus their raw bytes.
"""

from __future__ import annotations

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


def _to_plain(obj: Any) -> Any:
    """torch.Size and tuples become lists; anything msgpack cannot carry is refused."""
    if isinstance(obj, (torch.Size, tuple)):
        return [_to_plain(item) for item in obj]
    if isinstance(obj, list):
        return [_to_plain(item) for item in obj]
    if isinstance(obj, dict):
        return {key: _to_plain(value) for key, value in obj.items()}
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    raise TypeError(
        f"cannot send object of type {type(obj).__name__}: only msgpack types "
        "(None, bool, int, float, str, bytes, list, dict) travel between parties"
    )


def pack_object(obj: Any) -> bytes:
    return msgpack.packb(_to_plain(obj), use_bin_type=True)


def unpack_object(data: bytes, peer: str, max_bytes: int) -> Any:
    if len(data) > max_bytes:
        raise WireError(f"{peer} sent an object of {len(data)} bytes, over the limit {max_bytes}")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (msgpack.UnpackException, ValueError) as error:
        raise WireError(f"{peer} sent a malformed object: {error}") from None


def tensor_nbytes(tensor: torch.Tensor) -> int:
    return tensor.nelement() * tensor.element_size()
