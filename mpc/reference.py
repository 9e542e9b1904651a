"""The plaintext reference: the same model, initial weights, batches and scaling, in float.

It needs every party's table, so it only runs where all files are readable (local
launches and tests); its metrics sit beside the secure ones in the summary.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from mpc.data.config import DataConfig
from mpc.data.tables import read_table
from mpc.losses import Loss
from mpc.optim import lr_at, plaintext_optimizer
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


def pool_vertical(config: DataConfig, train_paths: Sequence[str], test_paths: Sequence[str]) -> PooledData:
    def columns(paths: Sequence[str]) -> tuple[list[np.ndarray], pd.Series]:
        frames = [read_table(path, f"party {i}") for i, path in enumerate(paths)]
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


def train_plaintext(model: nn.Module, data: PooledData, config: TrainConfig, loss: Loss,
                    seed: int) -> tuple[nn.Module, list[Any]]:
    """The same loss, optimizer and schedule in float (torch.optim) on the pooled rows;
    returns the model and the held-out metrics per epoch."""
    model = copy.deepcopy(model)
    optimiser = plaintext_optimizer(model.parameters(), config)
    rows = data.features.shape[0]
    curve: list[Any] = []
    for epoch in range(config.epochs):
        for group in optimiser.param_groups:
            group["lr"] = lr_at(config, epoch)
        order = epoch_order(rows, seed, epoch)
        features, labels = data.features[order], data.labels[order]
        for batch in batch_slices(rows, config.batch_size):
            optimiser.zero_grad()
            loss.plaintext(model(features[batch]), labels[batch]).backward()
            optimiser.step()
        if data.test_features is not None:
            with torch.no_grad():
                curve.append(loss.evaluate(model(data.test_features), data.test_labels))
    return model, curve


def readable(paths: Sequence[str]) -> bool:
    return all(path and Path(path).is_file() for path in paths)
