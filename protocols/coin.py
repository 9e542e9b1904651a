"""Public randomness by commit-then-reveal, so that no party can bias it by speaking last.

Every party draws a contribution from the CSPRNG and a nonce, and sends every other party
its commitment SHA-256(label, rank, contribution, nonce). Only once it holds every party's
commitment does it send its opening (contribution and nonce); each opening is checked
against its commitment, and a mismatch stops the party with an error naming the party
that opened something else. In a last round every party tells every other what it was sent,
so a party that committed to different values towards different peers is caught and named. The joint value
is SHA-256(label, every contribution in rank order): uniform as long as one party's
contribution is, and fixed before any contribution is seen.

Cost: three rounds of all-to-all messages (32, 48 and 32 * parties bytes per peer).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

import numpy as np
import torch

CONTRIBUTION_BYTES = 32
NONCE_BYTES = 16


class CoinTossError(RuntimeError):
    """A party's opening does not match its commitment, or the parties saw different commitments."""


def commitment(label: bytes, rank: int, contribution: bytes, nonce: bytes) -> bytes:
    return hashlib.sha256(b"cotrain-coin" + label + rank.to_bytes(4, "little") + contribution + nonce).digest()


def joint_value(label: bytes, contributions: list[bytes]) -> bytes:
    return hashlib.sha256(b"cotrain-coin-value" + label + b"".join(contributions)).digest()


def exchange(comm: Any, data: bytes) -> list[bytes]:
    """Send ``data`` to every other party and receive as many bytes from each (one round);
    every party's message by rank, this party's own included."""
    rank, world = comm.get_rank(), comm.get_world_size()
    padded = data + b"\0" * (-len(data) % 8)
    outgoing = torch.frombuffer(bytearray(padded), dtype=torch.int64)
    incoming = {src: torch.empty(len(padded) // 8, dtype=torch.int64) for src in range(world) if src != rank}
    requests = [comm.isend(outgoing, dst) for dst in incoming]
    requests += [comm.irecv(buffer, src) for src, buffer in incoming.items()]
    for request in requests:
        request.wait()
    return [data if src == rank else incoming[src].numpy().view(np.uint8).tobytes()[:len(data)]
            for src in range(world)]


def joint_random(comm: Any, label: bytes, contribution: bytes | None = None) -> bytes:
    """32 public random bytes that every party helped choose (commit, reveal, compare).
    ``contribution``: this party's (default: fresh CSPRNG bytes); the same length everywhere."""
    rank = comm.get_rank()
    contribution = secrets.token_bytes(CONTRIBUTION_BYTES) if contribution is None else contribution
    nonce = secrets.token_bytes(NONCE_BYTES)
    commitments = exchange(comm, commitment(label, rank, contribution, nonce))
    openings = exchange(comm, contribution + nonce)  # sent only once every commitment is in
    contributions = []
    for src, opening in enumerate(openings):
        theirs, their_nonce = opening[:len(contribution)], opening[len(contribution):]
        if not hmac.compare_digest(commitment(label, src, theirs, their_nonce), commitments[src]):
            raise CoinTossError(f"{comm.peer(src)} opened a contribution to the joint random value "
                                f"({label.decode()}) that it had not committed to; stopping")
        contributions.append(theirs)
    reports = exchange(comm, b"".join(commitments))  # what every party received from every party
    for sender in range(len(commitments)):
        versions = {report[32 * sender:32 * (sender + 1)] for report in reports}
        if len(versions) > 1:
            raise CoinTossError(f"{comm.peer(sender)} sent different commitments to the joint random value "
                                f"({label.decode()}) to different parties (or a party misreports what it got); "
                                "stopping")
    return joint_value(label, contributions)
