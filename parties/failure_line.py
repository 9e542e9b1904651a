"""The one line a failing party prints for its launcher and the person reading the output."""

from __future__ import annotations

import sys


def print_failure(party: str, kind: str, message: str) -> None:
    """``cotrain: party <party> failed: <kind>: <message>`` on stderr in a single write:
    every party shares the launcher's stderr, and Python's stderr writes each piece of a
    ``print`` at once, so a line printed in pieces can be split by another party's."""
    sys.stderr.write(f"cotrain: party {party} failed: {kind}: {message}\n")
    sys.stderr.flush()
