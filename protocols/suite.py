"""A protocol suite: one registered implementation per part kind, chosen by config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import protocols.tfp  # noqa: F401  (registers the built-in parts)
from protocols.parts import ProtocolPart
from protocols.registry import part_class


@dataclass
class ProtocolConfig:
    """``protocol.*``: the suite's name and its parts (``conf/protocol/<name>.yaml``)."""

    name: str = "tfp"
    triple_source: str = "tfp"
    options: dict[str, Any] = field(default_factory=dict)


class ProtocolSuite:
    """The parts of one suite, instantiated from the registry and installed into CrypTen."""

    def __init__(self, config: ProtocolConfig) -> None:
        self.config = config
        self.parts: dict[str, ProtocolPart] = {
            "triple_source": part_class("triple_source", config.triple_source)(),
        }

    @property
    def testing_only(self) -> bool:
        return any(part.testing_only for part in self.parts.values())

    def install(self, crypten: Any) -> None:
        for part in self.parts.values():
            part.install(crypten)

    def uninstall(self, crypten: Any) -> None:
        for part in self.parts.values():
            part.uninstall(crypten)

    def describe(self) -> dict[str, str]:
        return {kind: part.describe() for kind, part in self.parts.items()}

    def counters(self) -> dict[str, dict]:
        return {kind: part.counters.as_dict() for kind, part in self.parts.items()}
