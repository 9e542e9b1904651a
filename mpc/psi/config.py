"""``psi.*``: private set intersection, for a vertical split whose tables are not aligned."""

from __future__ import annotations

from dataclasses import dataclass

# psi.reveal: in which order the aligned rows come, and so what the order itself tells
REVEAL_MODES = {
    "ids": "rows in ascending id order",
    "size": "rows in the order of the ids' values blinded by every party's key (no id decides it)",
}


@dataclass
class PsiConfig:
    # off: the tables must already hold the same ids in the same order (a keyed digest of the
    # id column checks it); on: the parties find the ids they all hold and train on those rows
    enabled: bool = False
    # refuse to train on fewer common ids than this (a tiny intersection says too much about
    # the customers in it, and trains nothing)
    min_intersection: int = 10
    # ids: the aligned rows in ascending id order; size: in the blinded values' order
    reveal: str = "ids"
