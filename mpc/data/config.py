"""``data.*``: where each party's table is and how the parties split the data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

PARTITIONS = ("horizontal", "vertical")
KINDS = ("table", "sequence")


@dataclass
class DataConfig:
    kind: str = "table"  # table: numeric columns; sequence: token ids (mpc.data.sequences)
    partition: str = "horizontal"
    rows: int = 2000  # demo data: training rows per bank (horizontal) or customers (vertical)
    test_rows: int = 3000
    label: str = "is_fraud"
    task: str = "binary"  # binary (labels 0/1), multiclass (0..classes-1) or regression (floats)
    classes: int = 2  # multiclass: the number of classes (the model's output width)
    id_column: str = "id"
    label_party: int = 0  # vertical: the party that holds the label
    # demo data, vertical split: the share of each party's customers that every party holds;
    # below 1 each party also has customers of its own and its rows are in its own order
    # (psi.enabled=true finds the common ones)
    overlap: float = 1.0
    # sequence tables: tokens per row and each token field's vocabulary size
    length: int = 16
    vocabulary: Dict[str, int] = field(default_factory=dict)
