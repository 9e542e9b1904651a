"""What the engine does with a secret that depends on its share type: CrypTen's
``MPCTensor`` (semi-honest suites) or the malicious suite's authenticated tensor
(``protocols.malicious.cryptensor``). Both hold this party's share as one torch tensor
(``.share``) and rebuild a secret from it (``from_shares``); a type may also batch the
preprocessing of a repeating block (``planned``), check kept shares (``verify``), check
that every party holds the same public facts (``agree``), carry a MAC key whose share must
travel with saved shares (``mac_key_share``) and take private values into a secret as
authenticated inputs (``private_sum``)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager, Sequence

import torch

from protocols.share_tensors import plain


def saved_share(secret: Any) -> torch.Tensor:
    """A copy of this party's share of ``secret`` to write to a file: a plain int64 tensor in
    host memory (on a GPU CrypTen holds it on the device, in its CUDA wrapper)."""
    return plain(secret.share).to("cpu", copy=True)


def from_share(share: torch.Tensor, like: Any) -> Any:
    """A secret of ``like``'s type from this party's ``share``, on ``like``'s device."""
    return type(like).from_shares(share.to(like.device))


def planned(like: Any, key: Any) -> ContextManager:
    """Run a block whose preprocessing needs repeat each time ``key`` recurs (a training
    step on a batch of one size) the way ``like``'s share type does it best."""
    plan = getattr(type(like), "planned", None)
    return plan(key) if plan is not None else nullcontext()


def verify(secrets: Sequence[Any], suspect: str | None = None) -> None:
    """Check shares that are kept (saved, never revealed), where the share type can: under
    protocol=malicious a tampered share stops every party here, before it is written (or,
    read back from a file, before it is used: ``suspect`` says where they came from)."""
    check = getattr(type(secrets[0]), "verify", None) if secrets else None
    if check is not None:
        check(list(secrets), suspect)


def mac_key_share(like: Any) -> torch.Tensor | None:
    """This party's share of the MAC key its shares of ``like``'s type are checked under, or
    None where shares carry no MACs."""
    share = getattr(type(like), "mac_key_share", None)
    return None if share is None else share()


def private_sum(crypten: Any, own: torch.Tensor, like: Any) -> Any:
    """A secret of ``like``'s type that is the sum of every party's private ``own`` (the same
    shape at every party). Without MACs each party's value, encoded, is its share: no
    communication. A type with MACs takes each as its owner's input (``private_sum``)."""
    authenticated = getattr(type(like), "private_sum", None)
    if authenticated is not None:
        return authenticated(own)
    return from_share(crypten.encoder.FixedPointEncoder().encode(own), like)


def agree(like: Any, what: str, data: bytes) -> None:
    """Where ``like``'s share type protects against lying parties: stop unless every party
    holds the same public ``data`` (settled in the clear outside the MPC engine)."""
    check = getattr(type(like), "agree", None)
    if check is not None:
        check(what, data)
