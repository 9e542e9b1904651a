"""A researcher's plugin: a comparison part in its own module, registered on import.

``protocol.plugins=[plugin_comparison] protocol.comparison=plugin_sign`` makes every party
process import this file and use the part. It compares as CrypTen does and remembers how
often it was asked, so a test can tell that the plugin, not the built-in, did the work.
"""

from __future__ import annotations

from typing import Any, Callable

from protocols.comparison import CryptenComparison
from protocols.registry import register_part

NAME = "plugin_sign"
CALLS: list[int] = []  # one entry per comparison this process made, its element count


@register_part("comparison", NAME)
class PluginComparison(CryptenComparison):
    def less_than_zero(self, x: Any, crypten_ltz: Callable[[Any], Any]) -> Any:
        CALLS.append(x.share.numel())
        return crypten_ltz(x)

    def describe(self) -> str:
        return f"{NAME} (a plugin from tests/protocols)"
