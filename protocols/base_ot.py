"""Base OTs: Chou-Orlandi's "simplest OT" in edwards25519's prime-order subgroup.

Every operation on a secret (scalar multiplication, point addition, scalar reduction) is
libsodium's constant-time code (PyNaCl); keys are hashed with SHA-256 over the whole OT
transcript. The receiver computes both candidate messages for every OT and picks one with
a byte mask, so nothing here branches or indexes on a choice bit.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import numpy as np
from nacl.bindings import (crypto_core_ed25519_add, crypto_core_ed25519_is_valid_point,
                           crypto_core_ed25519_scalar_reduce, crypto_core_ed25519_sub,
                           crypto_scalarmult_ed25519_base_noclamp, crypto_scalarmult_ed25519_noclamp)
from nacl.exceptions import CryptoError

KAPPA = 128
_BASE_OT_TAG = b"cotrain-base-ot-ed25519"
POINT_BYTES = 32


class OtError(RuntimeError):
    """The OT peer sent something malformed."""


def random_scalar() -> bytes:
    """A uniform scalar mod the group order (64 random bytes reduced)."""
    return crypto_core_ed25519_scalar_reduce(secrets.token_bytes(64))


def _invalid_point(peer: int, what: str) -> OtError:
    return OtError(f"OT peer party {peer} sent a base-OT {what} with a point that is not a valid "
                   "edwards25519 group element")


def _multiply(scalar: bytes, point: bytes, peer: int, what: str) -> bytes:
    """scalar * point; libsodium refuses points off the prime-order subgroup and the identity."""
    try:
        return crypto_scalarmult_ed25519_noclamp(scalar, point)
    except CryptoError:
        raise _invalid_point(peer, what) from None


def _kdf(index: int, sender_point: bytes, receiver_point: bytes, shared: bytes) -> bytes:
    """The 128-bit key of OT ``index``, bound to both messages of that OT."""
    return hashlib.sha256(_BASE_OT_TAG + index.to_bytes(4, "little") + sender_point + receiver_point
                          + shared).digest()[:16]


def _checked_points(data: Any, count: int, peer: int, what: str) -> list[bytes]:
    if not isinstance(data, bytes) or len(data) != count * POINT_BYTES:
        got = f"{len(data)} bytes" if isinstance(data, bytes) else f"a {type(data).__name__}"
        raise OtError(f"OT peer party {peer} sent a malformed base-OT {what}: {got}, expected {count} points "
                      f"of {POINT_BYTES} bytes")
    return [data[i * POINT_BYTES: (i + 1) * POINT_BYTES] for i in range(count)]


def base_ot_send(comm: Any, peer: int, count: int = KAPPA) -> list[tuple[bytes, bytes]]:
    """Sender side of ``count`` random base OTs: both 128-bit keys of each.

    Sends A = aG; receives B_i = b_i G + c_i A; key 0 is H(a B_i), key 1 is H(a (B_i - A)).
    """
    a = random_scalar()
    big_a = crypto_scalarmult_ed25519_base_noclamp(a)
    comm.send_obj(big_a, peer)
    keys = []
    what = "receiver message"
    for index, point in enumerate(_checked_points(comm.recv_obj(peer), count, peer, what)):
        k0 = _kdf(index, big_a, point, _multiply(a, point, peer, what))
        try:
            b_minus_a = crypto_core_ed25519_sub(point, big_a)
        except CryptoError:
            raise _invalid_point(peer, what) from None
        keys.append((k0, _kdf(index, big_a, point, _multiply(a, b_minus_a, peer, what))))
    return keys


def base_ot_receive(comm: Any, peer: int, choices: np.ndarray) -> list[bytes]:
    """Receiver side: the key of each OT that ``choices`` (0/1 per OT) selects."""
    big_a = _checked_points(comm.recv_obj(peer), 1, peer, "sender message")[0]
    if not crypto_core_ed25519_is_valid_point(big_a):
        raise _invalid_point(peer, "sender message")
    scalars = [random_scalar() for _ in range(len(choices))]
    unchosen = [crypto_scalarmult_ed25519_base_noclamp(b) for b in scalars]  # b G
    shifted = [crypto_core_ed25519_add(point, big_a) for point in unchosen]  # b G + A
    # B = bG ^ ((bG ^ (bG + A)) & mask), mask = 0xff where the choice is 1: no branch on it
    plain = np.frombuffer(b"".join(unchosen), dtype=np.uint8).reshape(-1, POINT_BYTES)
    plus = np.frombuffer(b"".join(shifted), dtype=np.uint8).reshape(-1, POINT_BYTES)
    mask = (np.uint8(0) - np.asarray(choices, dtype=np.uint8))[:, None]
    message = (plain ^ ((plain ^ plus) & mask)).tobytes()
    comm.send_obj(message, peer)
    points = [message[i * POINT_BYTES: (i + 1) * POINT_BYTES] for i in range(len(choices))]
    return [_kdf(index, big_a, point, _multiply(b, big_a, peer, "sender message"))
            for index, (b, point) in enumerate(zip(scalars, points))]
