"""Secure SGD: forward, class-weighted BCE gradient, backward and update, all under MPC.

The loss gradient with respect to the logits has a closed form,
``w(y) * (sigmoid(z) - y) / batch``, so the loss itself (a logarithm) is never computed
under MPC; CrypTen's autograd carries that gradient back through the network. The
held-out loss and metrics are computed by the evaluator from revealed predictions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from mpc.metrics import ClassWeights, Metrics, evaluate


@dataclass
class TrainConfig:
    """``train.*``: the SGD schedule and who receives the trained model."""

    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.5
    reveal_to: list[str] = field(default_factory=list)
    plaintext_reference: bool = True
    evaluator: int = 0  # the party that receives held-out predictions and prints metrics


def epoch_order(rows: int, seed: int, epoch: int) -> torch.Tensor:
    """The public row order of one epoch; secure and plaintext runs use the same one."""
    return torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(rows))


def batch_slices(rows: int, batch_size: int) -> list[slice]:
    return [slice(start, min(start + batch_size, rows)) for start in range(0, rows, batch_size)]


@dataclass
class EpochRecord:
    epoch: int
    seconds: float
    bytes_sent: int
    bytes_received: int
    rounds: int
    metrics: Metrics | None = None

    def as_dict(self) -> dict:
        record = {k: v for k, v in self.__dict__.items() if k != "metrics"}
        record["metrics"] = self.metrics.as_dict() if self.metrics else None
        return record


class SecureTrainer:
    """Trains one CrypTen model on a secret-shared dataset; every party runs the same loop."""

    def __init__(self, crypten: Any, model: Any, config: TrainConfig, weights: ClassWeights,
                 seed: int, stats: Any, show_progress: bool) -> None:
        self.crypten = crypten
        self.model = model
        self.config = config
        self.weights = weights
        self.seed = seed
        self.stats = stats
        self.show_progress = show_progress
        self.rank = crypten.communicator.get().get_rank()

    def step(self, features: Any, labels: Any) -> None:
        crypten = self.crypten
        self.model.zero_grad()
        logits = self.model(features)
        with crypten.no_grad():
            row_weights = labels * (self.weights.positive - self.weights.negative) + self.weights.negative
            residual = logits.sigmoid() - labels
            gradient = (row_weights * residual).div(labels.size(0))
        logits.backward(gradient)
        self.model.update_parameters(self.config.lr)

    def predict_for(self, features: Any, dst: int) -> torch.Tensor | None:
        """Logits revealed to party ``dst`` only."""
        with self.crypten.no_grad():
            self.model.eval()
            logits = self.model(features)
            self.model.train()
        revealed = logits.get_plain_text(dst=dst)
        return revealed if self.rank == dst else None

    def fit(self, train: Any, test: Any | None,
            on_epoch: Callable[[EpochRecord], None] | None = None) -> list[EpochRecord]:
        self.model.train()
        evaluator = self.config.evaluator
        test_labels = test.labels.get_plain_text(dst=evaluator) if test is not None else None
        history: list[EpochRecord] = []
        for epoch in range(self.config.epochs):
            start = time.perf_counter()
            before = (self.stats.bytes_sent, self.stats.bytes_received, self.stats.rounds)
            order = epoch_order(train.rows, self.seed, epoch)
            features, labels = train.features[order], train.labels[order]
            slices = batch_slices(train.rows, self.config.batch_size)
            progress = tqdm(slices, desc=f"epoch {epoch + 1}/{self.config.epochs}", unit="batch",
                            disable=not self.show_progress, leave=True, dynamic_ncols=True)
            for rows in progress:
                self.step(features[rows], labels[rows])
            record = EpochRecord(
                epoch=epoch + 1,
                seconds=time.perf_counter() - start,
                bytes_sent=self.stats.bytes_sent - before[0],
                bytes_received=self.stats.bytes_received - before[1],
                rounds=self.stats.rounds - before[2],
            )
            if test is not None:
                logits = self.predict_for(test.features, evaluator)
                if logits is not None:
                    record.metrics = evaluate(logits, test_labels, self.weights)
                    progress.set_postfix(heldout_loss=f"{record.metrics.loss:.4f}", auc=f"{record.metrics.auc:.4f}")
            progress.close()
            history.append(record)
            if on_epoch is not None:
                on_epoch(record)
        return history
