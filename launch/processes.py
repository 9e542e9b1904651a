"""The processes below a launcher, by name, read from /proc (Linux; elsewhere none are found)."""

from __future__ import annotations

import os
from pathlib import Path


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            found += [int(child) for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except OSError:
        pass
    return found


def descendants(roots: list[int]) -> dict[int, str]:
    """Every live process below ``roots`` (roots included), with its name (``comm``; a party
    process names itself ``cotrain:<party>``)."""
    seen: dict[int, str] = {}
    stack = list(roots)
    while stack:
        pid = stack.pop()
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        name, _, rest = stat.partition("(")[2].rpartition(")")
        if rest.split()[0] == "Z" or pid in seen:
            continue
        seen[pid] = name
        stack += _children(pid)
    return seen
