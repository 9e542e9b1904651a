"""The plaintext reference: the same model, initial weights, batches and scaling, in float.

The scaling is the ``Preprocessing`` record the secure run agreed on (the statistics it
revealed, the columns it dropped), applied as it is: nothing is recomputed here.

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
from mpc.data.preprocessing import Preprocessing
from mpc.data.sequences import encoded_table
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


def pool_horizontal(config: DataConfig, preprocessing: Preprocessing, train_paths: Sequence[str],
                    test_paths: Sequence[str]) -> PooledData:
    """Every party's rows stacked, scaled by ``preprocessing`` (the statistics the secure run revealed)."""
    train = pd.concat([read_table(path, f"party {i}") for i, path in enumerate(train_paths)], ignore_index=True)
    tests = [read_table(path, f"party {i}") for i, path in enumerate(test_paths) if path]
    test = pd.concat(tests, ignore_index=True) if tests else None
    return _pooled(preprocessing, train[config.label], train, None if test is None else test[config.label], test)


def pool_sequences(config: DataConfig, train_paths: Sequence[str], test_paths: Sequence[str],
                   withheld: int | None) -> PooledData:
    """Every party's sequences one-hot encoded and stacked, but party ``withheld``'s training
    rows (the model owner's, used for pre-training only), as the secure run shares them."""
    def stacked(paths: Sequence[str], skip: int | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        parts = [encoded_table(path, f"party {i}", config) for i, path in enumerate(paths) if path and i != skip]
        if not parts:
            return None
        return torch.cat([x for x, _ in parts]).float(), torch.cat([y for _, y in parts]).float()

    features, labels = stacked(train_paths, withheld)
    test = stacked(test_paths, None)
    return PooledData(features, labels, *(test if test is not None else (None, None)))


def common_id_rows(frames: Sequence[pd.DataFrame], id_column: str) -> list[pd.DataFrame]:
    """Each table cut to the ids every table holds, in ascending id order: in plaintext, the
    rows private set intersection lines up (psi.enabled)."""
    common = set.intersection(*(set(frame[id_column].tolist()) for frame in frames))
    return [frame[frame[id_column].isin(common)].sort_values(id_column, kind="stable").reset_index(drop=True)
            for frame in frames]


def pool_vertical(config: DataConfig, preprocessing: Preprocessing, train_paths: Sequence[str],
                  test_paths: Sequence[str], intersect: bool = False) -> PooledData:
    """Every party's columns side by side (rows aligned by the run, or with ``intersect`` by a
    plaintext join on the id column), scaled by ``preprocessing``."""
    def joined(paths: Sequence[str]) -> tuple[pd.DataFrame, pd.Series]:
        frames = [read_table(path, f"party {i}") for i, path in enumerate(paths)]
        if intersect:
            frames = common_id_rows(frames, config.id_column)
        return pd.concat(frames, axis=1), frames[config.label_party][config.label]

    train, labels = joined(train_paths)
    has_test = all(test_paths) and len(test_paths) == len(train_paths)
    test, test_labels = joined(test_paths) if has_test else (None, None)
    return _pooled(preprocessing, labels, train, test_labels, test)


def _pooled(preprocessing: Preprocessing, y: pd.Series, x: pd.DataFrame, ty: pd.Series | None,
            tx: pd.DataFrame | None) -> PooledData:
    as_column = lambda s: torch.tensor(s.to_numpy(np.float64), dtype=torch.float32).reshape(-1, 1)  # noqa: E731
    return PooledData(
        preprocessing.transform(x).float(), as_column(y),
        None if tx is None else preprocessing.transform(tx).float(), None if ty is None else as_column(ty),
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
            with torch.no_grad():  # in eval mode, as the secure evaluation (BatchNorm, Dropout)
                curve.append(loss.evaluate(model.train(False)(data.test_features), data.test_labels))
            model.train()
    return model, curve


def readable(paths: Sequence[str]) -> bool:
    return all(path and Path(path).is_file() for path in paths)
