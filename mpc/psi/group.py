"""The group ids are blinded in: the prime-order subgroup of Curve25519, x-only.

An id is hashed to a group element with libsodium's Elligator 2 map
(``crypto_core_ed25519_from_uniform``, which also clears the cofactor) and carried as the
Montgomery u-coordinate of that point (``crypto_sign_ed25519_pk_to_curve25519``). Blinding is
X25519 (OpenSSL, through ``cryptography``) with a key drawn from the operating system's
CSPRNG. Scalar multiplications commute, so an id blinded once by every party's key, in any
order, becomes one value; without every key, a blinded value says nothing about its id
(decisional Diffie-Hellman). Hashing lands on the curve itself, never on its twist, so a
blinded value does not even reveal which of the two its id's hash fell on.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from nacl.bindings import crypto_core_ed25519_from_uniform, crypto_sign_ed25519_pk_to_curve25519

ELEMENT_BYTES = 32
_DOMAIN = b"cotrain/psi/v1/id"


class GroupError(ValueError):
    """A received value is not an element of the group."""


def hash_to_group(ids: np.ndarray) -> list[bytes]:
    """Each int64 id as a group element (its hash; no key involved)."""
    encoded = np.ascontiguousarray(ids, dtype="<i8").tobytes()
    return [
        crypto_sign_ed25519_pk_to_curve25519(crypto_core_ed25519_from_uniform(
            hashlib.sha256(_DOMAIN + encoded[start:start + 8]).digest()))
        for start in range(0, len(encoded), 8)
    ]


class BlindingKey:
    """One party's secret exponent for one run; never leaves the process."""

    def __init__(self) -> None:
        self._key = X25519PrivateKey.generate()

    def blind(self, elements: Sequence[bytes]) -> list[bytes]:
        """Every element raised to this key. Raises GroupError on a value of small order."""
        key = self._key
        try:
            return [key.exchange(X25519PublicKey.from_public_bytes(element)) for element in elements]
        except ValueError as error:
            raise GroupError(f"not a group element of prime order ({error})") from None


def pack(elements: Sequence[bytes]) -> bytes:
    return b"".join(elements)


def unpack(blob: bytes, count: int) -> list[bytes]:
    """``count`` elements from one message; GroupError if its length does not say so."""
    if not isinstance(blob, bytes) or len(blob) != count * ELEMENT_BYTES:
        size = len(blob) if isinstance(blob, bytes) else type(blob).__name__
        raise GroupError(f"expected {count} elements ({count * ELEMENT_BYTES} bytes), got {size}")
    return [blob[start:start + ELEMENT_BYTES] for start in range(0, len(blob), ELEMENT_BYTES)]
