"""The built-in models: ordinary ``torch.nn`` modules, named in config like any user model.

Every model the engine builds takes ``in_features``, which the engine fills in from the
feature count the parties agreed on; ``out_features`` is 1 for a binary or regression task
and the number of classes for a multi-class one.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn


class LogisticRegression(nn.Sequential):
    """One linear layer; with the binary task's sigmoid, logistic regression."""

    def __init__(self, in_features: int, out_features: int = 1) -> None:
        super().__init__(nn.Linear(in_features, out_features))


class MLP(nn.Sequential):
    """Linear layers of the given widths with ReLU between them."""

    def __init__(self, in_features: int, hidden: Sequence[int] = (16, 8), out_features: int = 1) -> None:
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            if size <= 0:
                raise ValueError(f"model.hidden={list(hidden)} must list positive sizes")
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        super().__init__(*layers, nn.Linear(width, out_features))
