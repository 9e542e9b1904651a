"""Checks on preprocessing and openings. ``none``: semi-honest, no checks.

CrypTen's ``cfg.mpc.active_security`` (a sacrifice check) is unsound over Z_2^64, so it is
never switched on; a sound check (e.g. MAC-authenticated openings) registers here.
"""

from __future__ import annotations

from typing import Any

from protocols.parts import ProtocolPart
from protocols.registry import register_part


@register_part("check", "none")
class NoCheck(ProtocolPart):
    def install(self, crypten: Any) -> None:
        crypten.cfg.mpc.active_security = False

    def describe(self) -> str:
        return "none (semi-honest parties)"
