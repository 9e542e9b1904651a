"""The preprocessing a run agreed on: which columns became features, and how they were scaled.

The secure run reveals these statistics (pooled, in a horizontal split; each party's own, in a
vertical one); the plaintext reference, the saved model file and ``cotrain predict`` all apply
exactly this record, so every score the project reports comes from one preprocessing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch


@dataclass
class Preprocessing:
    """Feature columns in model order, with the float64 mean and std each is scaled by."""

    features: list[str]
    mean: list[float]
    std: list[float]
    label: str
    id_column: str
    dropped: list[str] = field(default_factory=list)  # constant columns, reported by name and left out

    def __post_init__(self) -> None:
        if not len(self.features) == len(self.mean) == len(self.std):
            raise ValueError("preprocessing: features, mean and std must have one entry per feature")

    def transform(self, frame: pd.DataFrame) -> torch.Tensor:
        """Raw rows of ``frame`` (any column order) as standardised float64 features. A feature
        named ``column=token`` that is no column of ``frame`` is the one-hot code of ``token`` in
        token column ``column`` (a sequence run's, ``mpc.data.sequences.feature_names``)."""
        columns, tokens = [], {}
        for name in self.features:
            column, equals, token = name.rpartition("=")
            if name in frame.columns:
                columns.append(frame[name].to_numpy(np.float64))
            elif equals and column in frame.columns and token.isdigit():
                columns.append((frame[column].to_numpy(np.float64) == int(token)).astype(np.float64))
                tokens.setdefault(column, []).append(int(token))
            else:
                raise ValueError(f"the table lacks feature column {(column if equals else name)!r} that the model "
                                 "was trained on")
        for column, known in tokens.items():
            outside = np.flatnonzero(~np.isin(frame[column].to_numpy(np.float64), known))
            if len(outside):
                raise ValueError(f"column {column!r} holds token ids {min(known):g}..{max(known):g} (the model's "
                                 f"vocabulary), data row {outside[0] + 1} does not")
        values = np.stack(columns, axis=1) if columns else np.empty((len(frame), 0))
        return torch.from_numpy((values - np.asarray(self.mean)) / np.asarray(self.std))

    def subset(self, names: Sequence[str]) -> "Preprocessing":
        """The same record restricted to ``names`` (a vertical party's own columns)."""
        index = [self.features.index(name) for name in names]
        return Preprocessing([self.features[i] for i in index], [self.mean[i] for i in index],
                             [self.std[i] for i in index], self.label, self.id_column, list(self.dropped))

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> "Preprocessing":
        return cls(
            features=[str(name) for name in record["features"]],
            mean=[float(v) for v in record["mean"]],
            std=[float(v) for v in record["std"]],
            label=str(record["label"]),
            id_column=str(record["id_column"]),
            dropped=[str(name) for name in record.get("dropped", [])],
        )
