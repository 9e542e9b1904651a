"""A user's model for W8, written as a bank would write its own: a plain ``nn.Module`` with
named layers and a hand-written ``forward``, named to ``cotrain run`` by import path
(``model=custom model._target_=bench.models.UserMLP``). Its layers are made in the same
order as ``mpc.zoo.MLP``'s, so from the same seed it starts from the same weights."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class UserMLP(nn.Module):
    def __init__(self, in_features: int, hidden: Sequence[int] = (16, 8), out_features: int = 1) -> None:
        super().__init__()
        first, second = hidden
        self.first = nn.Linear(in_features, first)
        self.second = nn.Linear(first, second)
        self.score = nn.Linear(second, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(torch.relu(self.second(torch.relu(self.first(x)))))
