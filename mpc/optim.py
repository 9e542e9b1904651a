"""Secure optimizers: the update rules of ``torch.optim`` on secret-shared parameters.

Every optimizer state tensor (momentum buffers, moments) is an MPCTensor like the parameters,
so no party ever holds it in the clear. The learning-rate schedule is public (it depends on
the epoch only) and the plaintext reference applies the same one to ``torch.optim``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

OPTIMIZERS = ("sgd",)
SCHEDULES = ("constant", "step", "cosine")


def lr_at(config: Any, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based); the same values as torch's StepLR
    (step_size=train.lr_step, gamma=train.lr_gamma) and CosineAnnealingLR (T_max=epochs)."""
    if config.schedule == "step":
        return config.lr * config.lr_gamma ** (epoch // config.lr_step)
    if config.schedule == "cosine":
        return config.lr * (1 + math.cos(math.pi * epoch / config.epochs)) / 2
    return config.lr


class SecureSGD:
    """SGD with momentum and weight decay, as ``torch.optim.SGD`` (no dampening, no Nesterov).

    Without momentum the learning rate is folded into the loss gradient (backpropagation is
    linear in it), so a step costs no multiplication by a public constant per parameter.
    """

    def __init__(self, parameters: list[Any], config: Any) -> None:
        self.parameters = parameters
        self.config = config
        self.buffers: list[Any] | None = None

    def gradient_factor(self, epoch: int) -> float:
        return lr_at(self.config, epoch) if self.config.momentum == 0 else 1.0

    def step(self, epoch: int) -> None:
        lr, momentum, decay = lr_at(self.config, epoch), self.config.momentum, self.config.weight_decay
        if momentum == 0:
            for parameter in self.parameters:  # the gradients already carry lr
                step = parameter.grad if decay == 0 else parameter.grad + parameter * (lr * decay)
                parameter.sub_(step)
            return
        gradients = [p.grad if decay == 0 else p.grad + p * decay for p in self.parameters]
        if self.buffers is None:
            self.buffers = gradients
        else:
            self.buffers = [b * momentum + g for b, g in zip(self.buffers, gradients)]
        for parameter, buffer in zip(self.parameters, self.buffers):
            parameter.sub_(buffer * lr)

    def state(self) -> list[Any]:
        return list(self.buffers or [])


def secure_optimizer(parameters: list[Any], config: Any) -> SecureSGD:
    if config.optimizer == "sgd":
        return SecureSGD(parameters, config)
    raise ValueError(f"train.optimizer={config.optimizer} is unknown; choose one of {', '.join(OPTIMIZERS)}")


def plaintext_optimizer(parameters: Any, config: Any) -> torch.optim.Optimizer:
    """The same optimizer in ``torch.optim``, for the plaintext reference."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    raise ValueError(f"train.optimizer={config.optimizer} is unknown; choose one of {', '.join(OPTIMIZERS)}")
