"""The plaintext reference: the same model, initial weights, batches and scaling, in float.

It needs every party's table, so it only runs where all files are readable (local
launches and tests); its metrics sit beside the secure ones in the summary.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from mpc.data.config import DataConfig
from mpc.data.tables import read_table
from mpc.metrics import ClassWeights, Metrics, evaluate
from mpc.training import TrainConfig, batch_slices, epoch_order


@dataclass
class PooledData:
    features: torch.Tensor
    labels: torch.Tensor
    test_features: torch.Tensor | None
    test_labels: torch.Tensor | None


def _standardise(train: np.ndarray, *others: np.ndarray | None) -> list[np.ndarray | None]:
    mean, std = train.mean(0), train.std(0)
    std[std < 1e-6] = 1.0
    return [(train - mean) / std, *[None if o is None else (o - mean) / std for o in others]]


def pool_horizontal(config: DataConfig, train_paths: Sequence[str], test_paths: Sequence[str]) -> PooledData:
    frames = [read_table(path, f"party {i}") for i, path in enumerate(train_paths)]
    tests = [read_table(path, f"party {i}") for i, path in enumerate(test_paths) if path]
    features = [c for c in frames[0].columns if c not in (config.label, config.id_column)]
    train = pd.concat(frames, ignore_index=True)
    test = pd.concat(tests, ignore_index=True) if tests else None
    x, tx = _standardise(train[features].to_numpy(np.float64), None if test is None else test[features].to_numpy(np.float64))
    return _pooled(x, train[config.label], tx, None if test is None else test[config.label])


def common_id_rows(frames: Sequence[pd.DataFrame], id_column: str) -> list[pd.DataFrame]:
    """Each table cut to the ids every table holds, in ascending id order: in plaintext, the
    rows private set intersection lines up (psi.enabled)."""
    common = set.intersection(*(set(frame[id_column].tolist()) for frame in frames))
    return [frame[frame[id_column].isin(common)].sort_values(id_column, kind="stable").reset_index(drop=True)
            for frame in frames]


def pool_vertical(config: DataConfig, train_paths: Sequence[str], test_paths: Sequence[str],
                  intersect: bool = False) -> PooledData:
    def columns(paths: Sequence[str]) -> tuple[list[np.ndarray], pd.Series]:
        frames = [read_table(path, f"party {i}") for i, path in enumerate(paths)]
        if intersect:
            frames = common_id_rows(frames, config.id_column)
        own = [f[[c for c in f.columns if c not in (config.label, config.id_column)]].to_numpy(np.float64) for f in frames]
        return own, frames[config.label_party][config.label]

    train_parts, labels = columns(train_paths)
    has_test = all(test_paths) and len(test_paths) == len(train_paths)
    test_parts, test_labels = columns(test_paths) if has_test else ([None] * len(train_parts), None)
    scaled = [_standardise(part, test) for part, test in zip(train_parts, test_parts)]
    x = np.concatenate([s[0] for s in scaled], axis=1)
    tx = np.concatenate([s[1] for s in scaled], axis=1) if has_test else None
    return _pooled(x, labels, tx, test_labels)


def _pooled(x: np.ndarray, y: pd.Series, tx: np.ndarray | None, ty: pd.Series | None) -> PooledData:
    as_column = lambda s: torch.tensor(s.to_numpy(np.float64), dtype=torch.float32).reshape(-1, 1)  # noqa: E731
    return PooledData(
        torch.tensor(x, dtype=torch.float32), as_column(y),
        None if tx is None else torch.tensor(tx, dtype=torch.float32), None if ty is None else as_column(ty),
    )


def train_plaintext(model: nn.Module, data: PooledData, config: TrainConfig, weights: ClassWeights,
                    seed: int) -> tuple[nn.Module, list[Metrics]]:
    """SGD in float on the pooled rows; returns the model and held-out metrics per epoch."""
    model = copy.deepcopy(model)
    optimiser = torch.optim.SGD(model.parameters(), lr=config.lr)
    rows = data.features.shape[0]
    curve: list[Metrics] = []
    for epoch in range(config.epochs):
        order = epoch_order(rows, seed, epoch)
        features, labels = data.features[order], data.labels[order]
        for batch in batch_slices(rows, config.batch_size):
            optimiser.zero_grad()
            logits = model(features[batch])
            target = labels[batch]
            F.binary_cross_entropy_with_logits(logits, target, weight=weights.per_row(target)).backward()
            optimiser.step()
        if data.test_features is not None:
            with torch.no_grad():
                curve.append(evaluate(model(data.test_features), data.test_labels, weights))
    return model, curve


def readable(paths: Sequence[str]) -> bool:
    return all(path and Path(path).is_file() for path in paths)
