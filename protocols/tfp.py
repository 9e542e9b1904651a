"""CrypTen's trusted first party: rank 0 derives every tuple. For tests only.

Rank 0 sees each triple in full, so it could decrypt every multiplication. Every run that
uses it warns, and the summary says so. Tuples come from PRG seeds shared at start-up, so
they cost no communication; the part counts requests and tuple elements.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from protocols.crypten_hooks import drop_provider, use_provider
from protocols.parts import PartCounters, TripleSource
from protocols.registry import register_part

TFP_WARNING = (
    "protocol=tfp uses CrypTen's trusted first party: party 0 can see every triple and so "
    "every secret. It is for testing only; never use it with real data."
)
_PROVIDER_NAME = "COTRAIN_TFP"
_COUNTED = ("generate_additive_triple", "square", "generate_binary_triple", "wrap_rng", "B2A_rng")


def _elements(size: Any) -> int:
    return math.prod(size) if size is not None else 1


def counting_tfp_provider(crypten: Any, counters: PartCounters) -> Any:
    """CrypTen's TFP provider, counting each tuple request and its size."""
    base = crypten.mpc.provider.TrustedFirstParty

    class CountingTrustedFirstParty(base):
        NAME = _PROVIDER_NAME

    def counted(method_name: str):
        method = getattr(base, method_name)

        def wrapper(self, size0, *args, **kwargs):
            counters.calls += 1
            counters.tuples += _elements(size0)
            return method(self, size0, *args, **kwargs)

        wrapper.__name__ = method_name
        return wrapper

    for name in _COUNTED:
        setattr(CountingTrustedFirstParty, name, counted(name))
    return CountingTrustedFirstParty()


log = logging.getLogger("cotrain.protocols")


@register_part("triple_source", "tfp")
class TrustedFirstParty(TripleSource):
    testing_only = True

    def install(self, crypten: Any) -> None:
        log.warning(TFP_WARNING)
        use_provider(crypten, _PROVIDER_NAME, counting_tfp_provider(crypten, self.counters))

    def uninstall(self, crypten: Any) -> None:
        drop_provider(crypten, _PROVIDER_NAME)

    def describe(self) -> str:
        return "tfp (trusted first party, TESTING ONLY)"
