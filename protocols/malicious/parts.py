"""``protocol=malicious`` in the protocol registry.

The suite's parts name this package's engine: an authenticated dealer (a separate process,
rank ``num_parties``) and SPDZ2k MAC checks. The suite does not run through CrypTen: a
party whose protocol uses ``triple_source=authenticated_dealer`` trains with
:mod:`protocols.malicious.train` (see ``parties/malicious_run.py``); installing these parts
into CrypTen is refused.
"""

from __future__ import annotations

from typing import Any

from protocols.parts import ProtocolPart, TripleSource
from protocols.registry import register_part

TRIPLE_SOURCE = "authenticated_dealer"
CHECK = "spdz2k_mac"


def is_malicious(protocol: Any) -> bool:
    """Whether a ``protocol.*`` config selects this suite."""
    return getattr(protocol, "triple_source", None) == TRIPLE_SOURCE


def _refuse(part: str) -> None:
    raise RuntimeError(f"{part} belongs to protocol=malicious, which runs its own authenticated engine "
                       "(protocols.malicious), not CrypTen; it cannot be installed into a CrypTen session")


@register_part("triple_source", TRIPLE_SOURCE)
class AuthenticatedDealer(TripleSource):
    """A dealer process making SPDZ2k-authenticated tuples (values and MAC shares mod
    2^128, MAC key alpha in [0, 2^64) shared among the parties); every tuple comes with a
    companion for the parties' check of it (see ``dealer``)."""

    needs_dealer = True

    @staticmethod
    def make_dealer(parties: int) -> Any:
        from protocols.malicious.dealer import Dealer

        return Dealer(parties)

    def install(self, crypten: Any) -> None:
        _refuse(f"triple_source={TRIPLE_SOURCE}")

    def describe(self) -> str:
        return "authenticated dealer (SPDZ2k tuples, k=64, s=64; every tuple checked before use)"


@register_part("check", CHECK)
class Spdz2kMacCheck(ProtocolPart):
    """Batched MAC check: random linear combination, hash-committed, before any reveal."""

    def install(self, crypten: Any) -> None:
        _refuse(f"check={CHECK}")

    def describe(self) -> str:
        return "SPDZ2k MAC check (commit, open, verify) before every reveal"
