"""Per-party communication accounting: bytes each way, rounds and time on the wire."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class CommStats:
    bytes_sent: int = 0
    bytes_received: int = 0
    rounds: int = 0
    seconds: float = 0.0

    def add(self, sent: int = 0, received: int = 0, rounds: int = 1) -> None:
        self.bytes_sent += int(sent)
        self.bytes_received += int(received)
        self.rounds += rounds

    def timed(self) -> "Timed":
        """A context that adds its duration to ``seconds`` (a class, not a generator: it runs
        for every message, and a generator context costs several Python calls more)."""
        return Timed(self)

    def reset(self) -> None:
        self.bytes_sent = self.bytes_received = self.rounds = 0
        self.seconds = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


class Timed:
    """Adds the time spent inside it to a :class:`CommStats`' ``seconds``."""

    __slots__ = ("_stats", "_start")

    def __init__(self, stats: CommStats) -> None:
        self._stats = stats

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *_: Any) -> None:
        self._stats.seconds += time.perf_counter() - self._start
