"""CurveZMQ key files: one key pair per party, public keys shared, secret keys kept 0600.

Layout of a key directory: ``<name>.public`` holds the party's Z85 public key (one line);
``<name>.secret`` holds its public key then its secret key (two lines), readable only by the
owner. Secret keys are never logged; fingerprints identify public keys in messages.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable

import zmq

PUBLIC_SUFFIX = ".public"
SECRET_SUFFIX = ".secret"


class KeyFileError(ValueError):
    """A key file is missing, malformed, or too widely readable."""


def fingerprint(public_key: str | bytes) -> str:
    """A short, stable name for a public key (SHA-256 of its raw bytes, 16 hex digits)."""
    text = public_key.decode("ascii") if isinstance(public_key, bytes) else public_key
    return hashlib.sha256(zmq.utils.z85.decode(text.encode("ascii"))).hexdigest()[:16]


def _write_private(path: Path, text: str, mode: int) -> None:
    # O_EXCL: never overwrite (or follow a planted link to) an existing key file
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.chmod(path, mode)  # the umask may have narrowed it; never widened


def generate_party_keys(directory: str | os.PathLike, names: Iterable[str]) -> dict[str, str]:
    """Write a fresh key pair for each party into ``directory``; returns name → public key."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    public_keys = {}
    for name in names:
        public, secret = (key.decode("ascii") for key in zmq.curve_keypair())
        _write_private(root / f"{name}{SECRET_SUFFIX}", f"{public}\n{secret}\n", 0o600)
        _write_private(root / f"{name}{PUBLIC_SUFFIX}", f"{public}\n", 0o600)
        public_keys[name] = public
    return public_keys


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError) as error:
        raise KeyFileError(f"cannot read key file {path}: {error.__class__.__name__}") from None


def _checked_key(key: str, path: Path) -> str:
    if len(key) != 40:
        raise KeyFileError(f"{path} does not hold a Z85 CurveZMQ key (40 characters)")
    return key


def load_public_key(directory: str | os.PathLike, name: str) -> str:
    path = Path(directory) / f"{name}{PUBLIC_SUFFIX}"
    lines = _read_lines(path)
    if len(lines) != 1:
        raise KeyFileError(f"{path} should hold exactly one public key")
    return _checked_key(lines[0], path)


def load_key_pair(directory: str | os.PathLike, name: str) -> tuple[str, str]:
    """The party's (public, secret) keys; refuses a secret file others can read."""
    path = Path(directory) / f"{name}{SECRET_SUFFIX}"
    if path.exists() and path.stat().st_mode & 0o077:
        raise KeyFileError(f"{path} is readable by other users; chmod 600 it")
    lines = _read_lines(path)
    if len(lines) != 2:
        raise KeyFileError(f"{path} should hold a public and a secret key")
    public, secret = (_checked_key(line, path) for line in lines)
    if zmq.curve_public(secret.encode("ascii")).decode("ascii") != public:
        raise KeyFileError(f"{path}: the secret key does not belong to its public key")
    return public, secret
