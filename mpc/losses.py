"""Losses, one per task, each with its closed-form gradient with respect to the model outputs.

The loss itself is never computed under MPC: each step needs only dL/dz, which CrypTen's
autograd carries back through the network. Per row it is ``scale_i * (f(z_i) - target_i)``:

- binary: class-weighted binary cross-entropy, f = sigmoid, scale = w(y) / B;
- multiclass: softmax cross-entropy, f = softmax, target = onehot(y), scale = 1 / B;
- regression: mean squared error, f = identity, target = y, scale = 2 / B.

``factor`` (the learning rate, when the optimizer lets it be folded in) multiplies the scale.
The held-out loss and metrics are computed in float by the evaluator from revealed outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mpc.approximations import secure_softmax
from mpc.metrics import ClassWeights, evaluate, evaluate_multiclass, evaluate_regression
from mpc.training import weighted_sigmoid_residual

TASKS = ("binary", "multiclass", "regression")


def expected_outputs(task: str, classes: int) -> int:
    """The model's output width a task needs."""
    return classes if task == "multiclass" else 1


@dataclass(frozen=True)
class WeightedBinaryCrossEntropy:
    weights: ClassWeights
    task: str = "binary"

    def targets(self, crypten: Any, labels: Any) -> Any:
        return labels

    def row_scales(self, labels: Any) -> Any:
        """w(y) per row, computed once for all rows (one truncation). The learning rate and
        1/B are applied to the summed gradient instead (:func:`mpc.approximations.multiply_precisely`):
        lr w / B is a few dozen units of u, so encoded per row it would be off by percents."""
        positive, negative = self.weights.positive, self.weights.negative
        return labels * (positive - negative) + negative

    def output_gradient(self, crypten: Any, outputs: Any, targets: Any, scales: Any) -> Any:
        return weighted_sigmoid_residual(outputs, scales, targets)

    def plaintext(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(outputs, labels, weight=self.weights.per_row(labels))

    def evaluate(self, outputs: torch.Tensor, labels: torch.Tensor) -> Any:
        return evaluate(outputs, labels, self.weights)


@dataclass(frozen=True)
class SoftmaxCrossEntropy:
    classes: int
    task: str = "multiclass"

    def targets(self, crypten: Any, labels: Any) -> Any:
        """onehot(y) for every row at once: one batched equality against 0..K-1."""
        with crypten.no_grad():
            classes = torch.arange(self.classes, dtype=torch.float32, device=labels.device)
            return labels.expand(labels.size(0), self.classes).eq(classes)

    def row_scales(self, labels: Any) -> float:
        return 1.0

    def output_gradient(self, crypten: Any, outputs: Any, targets: Any, scales: float) -> Any:
        return secure_softmax(crypten, outputs) - targets

    def plaintext(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, labels.reshape(-1).long())

    def evaluate(self, outputs: torch.Tensor, labels: torch.Tensor) -> Any:
        return evaluate_multiclass(outputs, labels)


@dataclass(frozen=True)
class MeanSquaredError:
    task: str = "regression"

    def targets(self, crypten: Any, labels: Any) -> Any:
        return labels

    def row_scales(self, labels: Any) -> float:
        return 2.0

    def output_gradient(self, crypten: Any, outputs: Any, targets: Any, scales: float) -> Any:
        return (outputs - targets) * 2  # an integer: no truncation

    def plaintext(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(outputs, labels)

    def evaluate(self, outputs: torch.Tensor, labels: torch.Tensor) -> Any:
        return evaluate_regression(outputs, labels)


Loss = WeightedBinaryCrossEntropy | SoftmaxCrossEntropy | MeanSquaredError


def task_loss(task: str, classes: int, rows: int, positives: int) -> Loss:
    """The task's loss; the binary one weighs each class by the pooled positive count."""
    if task == "binary":
        return WeightedBinaryCrossEntropy(ClassWeights.balanced(rows, positives))
    if task == "multiclass":
        return SoftmaxCrossEntropy(classes)
    if task == "regression":
        return MeanSquaredError()
    raise ValueError(f"data.task={task} is not a task; choose one of {', '.join(TASKS)}")
