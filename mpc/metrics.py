"""Held-out metrics, computed by the party that receives the revealed predictions."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, f1_score, r2_score, roc_auc_score


@dataclass(frozen=True)
class ClassWeights:
    """'Balanced' weights: each class carries half of the total loss."""

    negative: float
    positive: float

    @classmethod
    def balanced(cls, rows: int, positives: int) -> "ClassWeights":
        if positives <= 0 or positives >= rows:
            raise ValueError(f"the training labels hold {positives} positives in {rows} rows; both classes are needed")
        return cls(negative=rows / (2.0 * (rows - positives)), positive=rows / (2.0 * positives))

    def per_row(self, labels: torch.Tensor) -> torch.Tensor:
        return self.negative + (self.positive - self.negative) * labels


def weighted_bce(logits: torch.Tensor, labels: torch.Tensor, weights: ClassWeights) -> float:
    return float(F.binary_cross_entropy_with_logits(logits, labels, weight=weights.per_row(labels)))


@dataclass(frozen=True)
class Metrics:
    auc: float
    pr_auc: float
    accuracy: float
    loss: float

    def as_dict(self) -> dict:
        return asdict(self)


def evaluate(logits: torch.Tensor, labels: torch.Tensor, weights: ClassWeights) -> Metrics:
    logits, labels = logits.reshape(-1).double(), labels.reshape(-1).double()
    scores = torch.sigmoid(logits).numpy()
    truth = labels.numpy()
    return Metrics(
        auc=float(roc_auc_score(truth, scores)),
        pr_auc=float(average_precision_score(truth, scores)),
        accuracy=float(((scores > 0.5) == (truth > 0.5)).mean()),
        loss=weighted_bce(logits, labels, weights),
    )


@dataclass(frozen=True)
class MulticlassMetrics:
    accuracy: float
    macro_f1: float
    loss: float  # softmax cross-entropy

    def as_dict(self) -> dict:
        return asdict(self)


def evaluate_multiclass(logits: torch.Tensor, labels: torch.Tensor) -> MulticlassMetrics:
    logits, truth = logits.double(), labels.reshape(-1).long()
    predicted = logits.argmax(1)
    return MulticlassMetrics(
        accuracy=float((predicted == truth).double().mean()),
        macro_f1=float(f1_score(truth.numpy(), predicted.numpy(), average="macro",
                                labels=list(range(logits.shape[1])), zero_division=0)),
        loss=float(F.cross_entropy(logits, truth)),
    )


@dataclass(frozen=True)
class RegressionMetrics:
    rmse: float
    r2: float
    loss: float  # mean squared error

    def as_dict(self) -> dict:
        return asdict(self)


def evaluate_regression(outputs: torch.Tensor, labels: torch.Tensor) -> RegressionMetrics:
    outputs, truth = outputs.reshape(-1).double(), labels.reshape(-1).double()
    mse = float(F.mse_loss(outputs, truth))
    return RegressionMetrics(rmse=mse**0.5, r2=float(r2_score(truth.numpy(), outputs.numpy())), loss=mse)
