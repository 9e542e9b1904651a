"""The interfaces of protocol parts and the accounting they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class PartCounters:
    """What a part cost, split into preprocessing (offline) and online work."""

    calls: int = 0
    tuples: int = 0
    offline_bytes: int = 0
    offline_rounds: int = 0
    online_bytes: int = 0
    online_rounds: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


class ProtocolPart(ABC):
    """A named, swappable primitive. ``install`` wires it into CrypTen's extension points."""

    part_name: str = ""
    testing_only: bool = False

    def __init__(self) -> None:
        self.counters = PartCounters()

    @abstractmethod
    def install(self, crypten: Any) -> None:
        """Point CrypTen at this part (its provider table, its config, its functions)."""

    def uninstall(self, crypten: Any) -> None:
        """Undo ``install``; parts that only set config need nothing here."""

    def describe(self) -> str:
        return self.part_name


class TripleSource(ProtocolPart):
    """Where Beaver triples and the other correlated tuples come from."""
