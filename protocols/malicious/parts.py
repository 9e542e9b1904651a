"""``protocol=malicious`` in the protocol registry.

The suite's parts name this package's engine: an authenticated dealer (a separate process,
rank ``num_parties``) and SPDZ2k MAC checks. Installed into a CrypTen session, the triple
source makes :class:`~protocols.malicious.cryptensor.AuthenticatedTensor` the session's
default tensor type and starts the party's :class:`~protocols.malicious.engine.Engine`, so
``crypten.cryptensor``, ``crypten.nn`` and the trainer compute on authenticated shares.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any

from protocols.parts import PartCounters, ProtocolPart, TripleSource
from protocols.registry import register_part

log = logging.getLogger("cotrain.malicious")

TRIPLE_SOURCE = "authenticated_dealer"
CHECK = "spdz2k_mac"


def is_malicious(protocol: Any) -> bool:
    """Whether a ``protocol.*`` config selects this suite."""
    return getattr(protocol, "triple_source", None) == TRIPLE_SOURCE


class _EngineCounted(ABC):
    """A part whose counters are the engine's statistics, read whenever they are asked for
    (the party's report is made while the engine still runs, before the suite stops)."""

    _counters: PartCounters

    @abstractmethod
    def engine_counts(self) -> tuple[int, int] | None:
        """(calls, tuples) so far, or None before the engine starts."""

    @property
    def counters(self) -> PartCounters:
        counts = self.engine_counts()
        if counts is not None:
            self._counters.calls, self._counters.tuples = counts
        return self._counters

    @counters.setter
    def counters(self, value: PartCounters) -> None:
        self._counters = value


@register_part("triple_source", TRIPLE_SOURCE)
class AuthenticatedDealer(_EngineCounted, TripleSource):
    """A dealer process making SPDZ2k-authenticated tuples (values and MAC shares mod
    2^128, MAC key alpha in [0, 2^64) shared among the parties); every tuple comes with a
    companion for the parties' check of it (see ``dealer``)."""

    needs_dealer = True

    @staticmethod
    def make_dealer(parties: int) -> Any:
        from protocols.malicious.dealer import Dealer

        return Dealer(parties)

    def __init__(self) -> None:
        self.engine: Any = None
        super().__init__()
        self._previous_type = "mpc"

    def engine_counts(self) -> tuple[int, int] | None:
        """Dealer answers received, tuples checked."""
        return None if self.engine is None else (self.engine.stats.dealer_requests, self.engine.stats.checked_tuples)

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

    def uninstall(self, crypten: Any) -> None:
        crypten.set_default_cryptensor_type(self._previous_type)

    def describe(self) -> str:
        return "authenticated dealer (SPDZ2k tuples, k=64, s=64; every tuple checked before anything it influenced is revealed)"


@register_part("check", CHECK)
class Spdz2kMacCheck(_EngineCounted, ProtocolPart):
    """Batched MAC check: random linear combination, hash-committed, before any reveal.
    It runs inside the engine the triple source starts; there is nothing to install."""

    def engine_counts(self) -> tuple[int, int] | None:
        """MAC checks run, opened values they covered."""
        engine = getattr(self.suite.triple_source, "engine", None) if self.suite is not None else None
        return None if engine is None else (engine.stats.checks, engine.stats.checked_elements)

    def install(self, crypten: Any) -> None:
        """The engine checks every opening itself."""

    def describe(self) -> str:
        return "SPDZ2k MAC check (commit, open, verify) before every reveal"
