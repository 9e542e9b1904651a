"""Pre-training by the model owner: one party trains the model in plaintext on its own rows,
then the parties fine-tune it under MPC on the others' rows.

The owner's weights enter the secure run as its private input (secret-shared from the owner),
so the other parties never see them unless ``train.reveal_to`` names them; the owner's own
rows are not shared at all.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from mpc.data.config import DataConfig
from mpc.data.sequences import encoded_table
from mpc.losses import task_loss
from mpc.reference import PooledData, train_plaintext
from mpc.training import TrainConfig


@dataclass
class PretrainConfig:
    """``pretrain.*``: who pre-trains, and its plaintext schedule (``owner`` null: no pre-training)."""

    owner: Optional[int] = None  # the rank that pre-trains on its own rows and contributes the weights
    epochs: int = 3
    batch_size: int = 32
    lr: float = 0.003
    optimizer: str = "adam"  # sgd, adam or adamw, as train.optimizer

    @property
    def enabled(self) -> bool:
        return self.owner is not None


def pretrain(model: nn.Module, features: torch.Tensor, labels: torch.Tensor, config: PretrainConfig,
             task: str, classes: int, seed: int) -> nn.Module:
    """``model`` trained in float on the owner's rows (a copy; the task's loss, its own class weights)."""
    loss = task_loss(task, classes, len(labels), int((labels > 0.5).sum().item()))
    schedule = dataclasses.replace(TrainConfig(), epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                                   optimizer=config.optimizer)
    trained, _ = train_plaintext(model, PooledData(features.float(), labels.float(), None, None), schedule, loss, seed)
    return trained


def pretrain_on_file(model: nn.Module, path: str, party: str, data: DataConfig, config: PretrainConfig,
                     seed: int) -> nn.Module:
    """:func:`pretrain` on the owner's sequence file (the owner's own rows)."""
    features, labels = encoded_table(path, party, data)
    return pretrain(model, features, labels, config, data.task, data.classes, seed)
