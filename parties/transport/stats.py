"""Per-party communication accounting: bytes each way, rounds and time on the wire."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator


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

    @contextmanager
    def timed(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    def reset(self) -> None:
        self.bytes_sent = self.bytes_received = self.rounds = 0
        self.seconds = 0.0

    def as_dict(self) -> dict:
        return asdict(self)
