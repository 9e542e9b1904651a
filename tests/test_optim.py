"""Secure optimizers against torch.optim, and Adam's square root and division in the ring.

Tolerance for the optimizer runs (u = 2^-16), a linear model with squared error: at the
same weights the secure gradient is off by at most g_err = 2 max|x| ((|theta|_1 + 3) u + 2u) + u
(the outputs' encoding and truncation, the product, the division by B); a weight error e
adds L e sqrt(P) more (L the loss's smoothness, P the parameter count). SGD with momentum
carries these through its buffer exactly; Adam's step m / (sqrt(v) + eps) moves by at most
dg (1 + r) / (sqrt(v) + eps) for a gradient error dg (r = |m| / (sqrt(v) + eps), taken with
sqrt(v) from the float run), plus the measured errors of the secure square root and division.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpc.training import TrainConfig
from sessions import run_parties

U = 2.0**-16
STEPS, ROWS, FEATURES = 6, 64, 4


def _wide_range_errors(crypten, rank):
    from mpc.approximations import secure_divide, secure_sqrt

    x = torch.cat([torch.zeros(1), torch.logspace(-4, 9, 6001)])
    root = secure_sqrt(crypten, crypten.cryptensor(x, src=0)).get_plain_text().double()
    exact = x.double().sqrt()
    d = torch.logspace(-0.6, 5, 3001)
    n = (torch.rand(3001, generator=torch.Generator().manual_seed(1)) - 0.5) * 2 * d
    quotient = secure_divide(crypten, crypten.cryptensor(n, src=0), crypten.cryptensor(d, src=0)).get_plain_text().double()
    return {"sqrt relative (x >= 1)": ((root - exact) / exact).abs()[x >= 1].max().item(),
            "sqrt absolute (x < 1)": (root - exact).abs()[x < 1].max().item(),
            "divide (|n| <= d)": (quotient - n.double() / d.double()).abs().max().item()}


@pytest.mark.slow
def test_sqrt_and_division_over_adams_ranges():
    from mpc.approximations import DIVIDE_MAX_ERROR, SQRT_MAX_ABSOLUTE_ERROR, SQRT_MAX_RELATIVE_ERROR

    errors = run_parties(_wide_range_errors, world=2, timeout_s=600)[0]
    print(errors)
    assert errors["sqrt relative (x >= 1)"] <= SQRT_MAX_RELATIVE_ERROR
    assert errors["sqrt absolute (x < 1)"] <= SQRT_MAX_ABSOLUTE_ERROR
    assert errors["divide (|n| <= d)"] <= DIVIDE_MAX_ERROR


def _problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(ROWS, FEATURES, generator=generator)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]]) + 0.3
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, 1)), x, y


def _secure_steps(config: TrainConfig):
    def run(crypten, rank):
        from mpc.losses import MeanSquaredError
        from mpc.models import encrypt_model
        from mpc.training import SecureTrainer

        model, x, y = _problem()
        secure = encrypt_model(crypten, model, FEATURES)
        secure.train()
        loss = MeanSquaredError()
        trainer = SecureTrainer(crypten, secure, config, loss, seed=0, stats=None, show_progress=False)
        features, labels = crypten.cryptensor(x, src=0), crypten.cryptensor(y, src=0)
        trajectory = []
        for epoch in range(STEPS):
            scales = loss.row_scales(labels, ROWS, trainer.optimizer.gradient_factor(epoch))
            trainer.step(features, labels, scales, epoch)
            trajectory.append(torch.cat([p.get_plain_text().reshape(-1) for p in secure.parameters()]))
        return trajectory

    return run


def _plain_steps(config: TrainConfig) -> tuple[list[torch.Tensor], list[tuple]]:
    """The float trajectory, and Adam's bias-corrected moments (m, v) at each step."""
    from mpc.optim import lr_at, plaintext_optimizer

    model, x, y = _problem()
    optimizer = plaintext_optimizer(model.parameters(), config)
    trajectory, moments = [], []
    beta1, beta2 = config.betas
    for epoch in range(STEPS):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(config, epoch)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        trajectory.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
        if config.optimizer != "sgd":
            state = [optimizer.state[p] for p in model.parameters()]
            m = torch.cat([s["exp_avg"].reshape(-1) for s in state]).double() / (1 - beta1 ** (epoch + 1))
            v = torch.cat([s["exp_avg_sq"].reshape(-1) for s in state]).double() / (1 - beta2 ** (epoch + 1))
            moments.append((m, v))
    return trajectory, moments


def _bound(config: TrainConfig, x: torch.Tensor, trajectory: list[torch.Tensor], moments: list[tuple]) -> float:
    from mpc.approximations import DIVIDE_MAX_ERROR, SQRT_MAX_RELATIVE_ERROR
    from mpc.optim import lr_at

    features = torch.cat([x, torch.ones(ROWS, 1)], 1).double()
    smoothness = 2 * torch.linalg.eigvalsh(features.T @ features).max().item() / ROWS
    theta_l1 = max(t.abs().sum().item() for t in trajectory) + 1
    gradient_error = 2 * features.abs().max().item() * ((theta_l1 + 3) * U + 2 * U) + U
    params = features.shape[1]
    error, buffer = U / 2, 0.0
    for step in range(STEPS):
        lr = lr_at(config, step)
        dg = gradient_error + smoothness * error * params**0.5
        if config.optimizer == "sgd":
            buffer = config.momentum * buffer + dg + config.weight_decay * error
            error += lr * buffer
        else:
            m_hat, v_hat = moments[step]
            denominator = v_hat.sqrt().min().item() + config.eps
            ratio = (m_hat.abs() / (v_hat.sqrt() + config.eps)).max().item()
            error += lr * (dg * (1 + ratio) / denominator + ratio * SQRT_MAX_RELATIVE_ERROR + DIVIDE_MAX_ERROR)
            error += lr * config.weight_decay * (error + theta_l1)  # decay of the (erroneous) weights
    return error


@pytest.mark.slow
@pytest.mark.parametrize("optimizer, extra", [("sgd", {"momentum": 0.9, "weight_decay": 0.01, "schedule": "step",
                                                        "lr_step": 2, "lr_gamma": 0.5}),
                                               ("adam", {"weight_decay": 0.01, "schedule": "cosine"}),
                                               ("adamw", {"weight_decay": 0.1})])
def test_secure_optimizer_follows_torch(optimizer, extra):
    config = TrainConfig(epochs=STEPS, lr=0.05, optimizer=optimizer, **extra)
    secure = run_parties(_secure_steps(config), world=2, timeout_s=600)[0]
    plain, moments = _plain_steps(config)
    bound = _bound(config, _problem()[1], plain, moments)
    errors = [(s.double() - p.double()).abs().max().item() for s, p in zip(secure, plain)]
    print(optimizer, errors, bound)
    assert max(errors) <= bound
    assert (plain[-1] - plain[0]).abs().max() > 10 * bound  # the weights did move
