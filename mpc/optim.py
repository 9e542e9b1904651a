"""Secure optimizers: the update rules of ``torch.optim`` on secret-shared parameters.

Every optimizer state tensor (momentum buffers, moments) is a secret like the parameters,
so no party ever holds it in the clear. The learning-rate schedule is public (it depends on
the epoch only) and the plaintext reference applies the same one to ``torch.optim``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mpc.shares import from_share, saved_share

OPTIMIZERS = ("sgd", "adam", "adamw")
# Adam works on gradients times 2^8 (an integer multiplication, exact), so that the second
# moment of a gradient of 1e-3 is 6.6e-2 rather than 1e-6 (under one ulp); |gradient| < 160
# keeps its square inside the ring. eps >= 1e-3: below it, a gradient that is zero in float
# but one ulp under MPC would take a full step.
ADAM_GRADIENT_SCALE = 2**8
ADAM_MIN_EPS = 1e-3
_PRECISE = 2**8
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

    def state_dict(self) -> dict[str, Any]:
        """This party's shares of the momentum buffers (none before the first step)."""
        return {f"buffer.{i}": saved_share(buffer) for i, buffer in enumerate(self.buffers or [])}

    def load_state_dict(self, crypten: Any, state: dict[str, Any]) -> None:
        count = sum(key.startswith("buffer.") for key in state)
        self.buffers = [from_share(state[f"buffer.{i}"], self.parameters[i]) for i in range(count)] or None


class SecureAdam:
    """Adam (``decoupled=False``, weight decay added to the gradient) or AdamW (decoupled
    weight decay), as ``torch.optim.Adam``/``AdamW`` without amsgrad. All parameters are
    updated as one flat tensor, so the square root and the division run once per step."""

    def __init__(self, crypten: Any, parameters: list[Any], config: Any, decoupled: bool) -> None:
        self.crypten = crypten
        self.parameters = parameters
        self.config = config
        self.decoupled = decoupled
        self.steps = 0
        self.moments: list[Any] | None = None  # [m, v] of the scaled gradients, flat

    def gradient_factor(self, epoch: int) -> float:
        return 1.0

    def step(self, epoch: int) -> None:
        from mpc.approximations import secure_divide, secure_sqrt

        crypten, config = self.crypten, self.config
        lr, (beta1, beta2), decay = lr_at(config, epoch), config.betas, config.weight_decay
        flat = crypten.cat([p.grad.flatten() for p in self.parameters])
        values = crypten.cat([p.flatten() for p in self.parameters]) if decay else None
        if decay and not self.decoupled:
            flat = flat + values * decay
        gradient = flat * ADAM_GRADIENT_SCALE
        # 1 - beta2 = 0.001 is 65.5 units of u: applied as (c 2^8) / 2^8, it keeps its digits
        weights = torch.tensor([[(1 - beta1) * _PRECISE], [(1 - beta2) * _PRECISE]])
        fresh = (crypten.stack([gradient, gradient.square()]) * weights).div(_PRECISE)
        if self.moments is None:  # zeros, so that every step runs the same operations (the
            self.moments = fresh * 0  # malicious suite deals a step's tuples as one planned request)
        moments = self.moments * torch.tensor([[beta1], [beta2]]) + fresh
        self.moments = moments
        self.steps += 1
        corrected = moments * torch.tensor([[1 / (1 - beta1**self.steps)], [1 / (1 - beta2**self.steps)]])
        denominator = secure_sqrt(crypten, corrected[1]) + config.eps * ADAM_GRADIENT_SCALE
        update = secure_divide(crypten, corrected[0], denominator) * lr
        if decay and self.decoupled:
            update = update + values * (lr * decay)
        offset = 0
        for parameter in self.parameters:
            size = parameter.numel()
            parameter.sub_(update[offset:offset + size].reshape(parameter.size()))
            offset += size

    def state(self) -> list[Any]:
        return [self.moments] if self.moments is not None else []

    def state_dict(self) -> dict[str, Any]:
        """The step count and this party's shares of the moments."""
        state: dict[str, Any] = {"steps": self.steps}
        if self.moments is not None:
            state["moments"] = saved_share(self.moments)
        return state

    def load_state_dict(self, crypten: Any, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        moments = state.get("moments")
        self.moments = None if moments is None else from_share(moments, self.parameters[0])


def secure_optimizer(crypten: Any, parameters: list[Any], config: Any) -> SecureSGD | SecureAdam:
    if config.optimizer == "sgd":
        return SecureSGD(parameters, config)
    if config.optimizer in ("adam", "adamw"):
        return SecureAdam(crypten, parameters, config, decoupled=config.optimizer == "adamw")
    raise ValueError(f"train.optimizer={config.optimizer} is unknown; choose one of {', '.join(OPTIMIZERS)}")


def plaintext_optimizer(parameters: Any, config: Any) -> torch.optim.Optimizer:
    """The same optimizer in ``torch.optim``, for the plaintext reference."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer in ("adam", "adamw"):
        kind = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
        return kind(parameters, lr=config.lr, betas=tuple(config.betas), eps=config.eps, weight_decay=config.weight_decay)
    raise ValueError(f"train.optimizer={config.optimizer} is unknown; choose one of {', '.join(OPTIMIZERS)}")
