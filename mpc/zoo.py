"""The built-in models: ordinary ``torch.nn`` modules, named in config like any user model.

Every model the engine builds takes ``in_features``, which the engine fills in from the
feature count the parties agreed on; ``out_features`` is 1 for a binary or regression task
and the number of classes for a multi-class one.
"""

from __future__ import annotations

from typing import Sequence

import torch
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


class SequenceClassifier(nn.Module):
    """A small transformer encoder over token sequences, mean-pooled, with a linear head.

    Each row holds ``length`` tokens, each a multi-hot vector of its fields' one-hot codes
    (``mpc.data.sequences``), so the first linear layer (no bias) is the sum of one
    embedding per field: an embedding lookup computed as a product with one-hot rows.
    """

    def __init__(self, in_features: int, length: int = 16, d_model: int = 32, heads: int = 4,
                 layers: int = 2, feedforward: int = 64, out_features: int = 1) -> None:
        super().__init__()
        if in_features % length:
            raise ValueError(f"in_features={in_features} is not a whole number of tokens of model.length={length}")
        self.length, self.vocabulary = length, in_features // length
        self.embed = nn.Linear(self.vocabulary, d_model, bias=False)
        block = nn.TransformerEncoderLayer(d_model, heads, feedforward, dropout=0.0, activation="gelu",
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.view(-1, self.length, self.vocabulary))
        return self.head(self.encoder(tokens).mean(1))
