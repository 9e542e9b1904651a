"""``protocol=malicious`` in the protocol registry.

The suite's parts name this package's engine: an authenticated dealer (a separate process,
rank ``num_parties``) and SPDZ2k MAC checks. Installed into a CrypTen session, the triple
source makes :class:`~protocols.malicious.cryptensor.AuthenticatedTensor` the session's
default tensor type and starts the party's :class:`~protocols.malicious.engine.Engine`, so
``crypten.cryptensor``, ``crypten.nn`` and the trainer compute on authenticated shares.
"""

from __future__ import annotations

import logging
from typing import Any

from protocols.parts import ProtocolPart, TripleSource
from protocols.registry import register_part

log = logging.getLogger("cotrain.malicious")

TRIPLE_SOURCE = "authenticated_dealer"
CHECK = "spdz2k_mac"


def is_malicious(protocol: Any) -> bool:
    """Whether a ``protocol.*`` config selects this suite."""
    return getattr(protocol, "triple_source", None) == TRIPLE_SOURCE


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

    def __init__(self) -> None:
        super().__init__()
        self.engine: Any = None
        self._previous_type = "mpc"

    def install(self, crypten: Any) -> None:
        from protocols.malicious.cryptensor import TENSOR_TYPE

        self._previous_type = crypten.get_default_cryptensor_type()
        crypten.set_default_cryptensor_type(TENSOR_TYPE)

    def start(self, crypten: Any) -> None:
        from protocols.malicious.cryptensor import set_engine
        from protocols.malicious.engine import Engine

        parties = self.comm.get_world_size()
        self.engine = Engine(self.comm, parties, dealer=parties)  # the dealer is the rank after the parties
        set_engine(self.engine)

    def stop(self, crypten: Any) -> None:
        from protocols.malicious.cryptensor import set_engine

        if self.engine is None:
            return
        set_engine(None)
        try:
            self.engine.close()
        except Exception as error:  # the run is ending anyway; say why the dealer may linger
            log.warning("could not tell the dealer to stop: %s", error)
        stats = self.engine.stats
        self.counters.tuples = stats.checked_tuples
        self.counters.calls = stats.dealer_requests

    def uninstall(self, crypten: Any) -> None:
        crypten.set_default_cryptensor_type(self._previous_type)

    def describe(self) -> str:
        return "authenticated dealer (SPDZ2k tuples, k=64, s=64; every tuple checked before use)"


@register_part("check", CHECK)
class Spdz2kMacCheck(ProtocolPart):
    """Batched MAC check: random linear combination, hash-committed, before any reveal.
    It runs inside the engine the triple source starts; there is nothing to install."""

    def install(self, crypten: Any) -> None:
        """The engine checks every opening itself."""

    def describe(self) -> str:
        return "SPDZ2k MAC check (commit, open, verify) before every reveal"
