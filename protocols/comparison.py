"""Secure comparison (``x < 0``), the core of ReLU, sigmoid's sign split and max.

``crypten`` is CrypTen's: convert to a binary sharing (A2B, a log-depth adder of binary
AND triples), take the sign bit and convert it back (B2A with one B2A tuple). The part
counts each comparison and charges its traffic; a new comparison registers here by name.
"""

from __future__ import annotations

from typing import Any, Callable

from protocols import crypten_hooks
from protocols.parts import ProtocolPart
from protocols.registry import register_part


@register_part("comparison", "crypten")
class CryptenComparison(ProtocolPart):
    def install(self, crypten: Any) -> None:
        crypten_hooks.install_comparison(crypten, self.less_than_zero, self.counters)

    def less_than_zero(self, x: Any, crypten_ltz: Callable[[Any], Any]) -> Any:
        return crypten_ltz(x)

    def uninstall(self, crypten: Any) -> None:
        crypten_hooks.uninstall_comparison(crypten)

    def describe(self) -> str:
        return "crypten (A2B adder + sign bit + B2A)"
