"""The benchmark workloads, run identically by every party of every system.

Each workload is a setup (sharing inputs, not timed) that returns a callable doing the timed
work once. ``ops`` is a small table that says how a system trains and computes sigmoid:
plain CrypTen uses CrypTen's own ``sigmoid`` in a training step written the way a CrypTen
user writes it; this project uses ``mpc.training``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

# name -> (description, parties, repeats)
WORKLOADS: dict[str, tuple[str, int, int]] = {
    "W1": ("mul 1,000,000", 2, 3),
    "W2a": ("matmul 256x256", 2, 3),
    "W2b": ("matmul 1024x1024", 2, 1),
    "W3": ("ReLU 100,000", 2, 3),
    "W4": ("sigmoid 100,000", 2, 3),
    "W5": ("logreg epoch 8192x32 b512", 2, 3),
    "W6": ("MLP 32-64-1 epoch b512", 2, 3),
    "W7": ("demo job epoch (3 parties)", 3, 1),
    "W8": ("MLP epoch, your model vs built-in", 3, 1),
    "W9": ("sequence fine-tuning step", 3, 1),
}
CUDA_WORKLOADS = ("W2a", "W2b", "W5", "W6")
ROWS, FEATURES, BATCH, LR = 8192, 32, 512, 0.5
# each workload's size: elements (W1, W3, W4), matrix side (W2a, W2b) or training rows (W5, W6)
SIZES = {"W1": 1_000_000, "W2a": 256, "W2b": 1024, "W3": 100_000, "W4": 100_000, "W5": ROWS, "W6": ROWS}
# protocol=malicious deals ~200 authenticated values per truncation and ~600 per comparison
# (bench/README.md), so it runs these sizes where the full one would not fit a phase; the
# dealer suite runs them too, beside it, for the ratio
MALICIOUS_SIZES = {"W1": 20_000, "W2a": 128, "W2b": 256, "W3": 10_000, "W4": 2_000, "W5": ROWS, "W6": 1024}
TEST_ROWS = 2048


def training_data(rows: int = ROWS, features: int = FEATURES, seed: int = 7) -> dict[str, torch.Tensor]:
    """A public-seeded logistic dataset: x ~ N(0, 1), y ~ Bernoulli(sigmoid(x w + b))."""
    generator = torch.Generator().manual_seed(seed)
    total = rows + TEST_ROWS
    x = torch.randn(total, features, generator=generator)
    w = torch.randn(features, 1, generator=generator) / features**0.5 * 2
    y = (torch.rand(total, 1, generator=generator) < torch.sigmoid(x @ w - 1.0)).float()
    return {"x": x[:rows], "y": y[:rows], "test_x": x[rows:], "test_y": y[rows:]}


def torch_model(kind: str, features: int = FEATURES, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "logreg":
        return nn.Sequential(nn.Linear(features, 1))
    return nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, 1))


def class_weights(labels: torch.Tensor) -> tuple[float, float]:
    """Balanced BCE weights (negative, positive), as mpc.metrics.ClassWeights.balanced."""
    rows, positive = labels.numel(), float(labels.sum())
    return rows / (2 * (rows - positive)), rows / (2 * positive)


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels.reshape(-1).numpy(), scores.reshape(-1).double().numpy()))


# -- plaintext torch ------------------------------------------------------------------------
def plaintext_epoch(kind: str, data: dict, batch: int, lr: float,
                    device: Any = None) -> tuple[Callable[[], None], Callable[[], float]]:
    device = torch.device(device or "cpu")
    model = torch_model(kind, data["x"].shape[1]).to(device)
    negative, positive = class_weights(data["y"])
    x, y = data["x"].to(device), data["y"].to(device)

    def run() -> None:
        for start in range(0, x.shape[0], batch):
            xb, yb = x[start:start + batch], y[start:start + batch]
            model.zero_grad()
            logits = model(xb)
            with torch.no_grad():
                weights = yb * (positive - negative) + negative
                gradient = weights * (torch.sigmoid(logits) - yb) / yb.shape[0]
            logits.backward(gradient)
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter -= lr * parameter.grad

    def score() -> float:
        with torch.no_grad():
            return auc(model(data["test_x"].to(device)).cpu(), data["test_y"])

    return run, score


# -- the two secure systems' training steps ----------------------------------------------------
def crypten_step(crypten: Any, model: Any, x: Any, y: Any, negative: float, positive: float, lr: float) -> None:
    """A closed-form weighted-BCE SGD step the way a plain CrypTen 0.4.1 user writes it."""
    model.zero_grad()
    logits = model(x)
    with crypten.no_grad():
        weights = y * (positive - negative) + negative
        gradient = (weights * (logits.sigmoid() - y)).div(y.size(0))
    logits.backward(gradient)
    model.update_parameters(lr)


@dataclass
class SystemOps:
    """How one secure system runs an epoch and a sigmoid."""

    name: str
    # (crypten, model, negative, positive, lr, x, y, batch slices) -> the timed epoch
    make_epoch: Callable[..., Callable[[], None]]
    sigmoid: Callable[[Any], Any]
    encrypt: Callable[..., Any]


def crypten_ops() -> SystemOps:
    def make_epoch(crypten, model, negative, positive, lr, x, y, slices):
        def run() -> None:
            for rows in slices:
                crypten_step(crypten, model, x[rows], y[rows], negative, positive, lr)

        return run

    return SystemOps("crypten", make_epoch, lambda x: x.sigmoid(), encrypt)


def cotrain_ops() -> SystemOps:
    from mpc.losses import WeightedBinaryCrossEntropy
    from mpc.metrics import ClassWeights
    from mpc.training import SecureTrainer, TrainConfig, secure_sigmoid

    def make_epoch(crypten, model, negative, positive, lr, x, y, slices):
        loss = WeightedBinaryCrossEntropy(ClassWeights(negative=negative, positive=positive))
        trainer = SecureTrainer(crypten, model, TrainConfig(lr=lr), loss, seed=0, stats=None, show_progress=False)

        def run() -> None:  # as SecureTrainer.fit: the per-row scales once, then the planned steps
            scales = loss.row_scales(y)
            for rows in slices:
                with trainer.planned("step", x, rows.stop - rows.start):
                    trainer.step(x[rows], y[rows], scales[rows])

        return run

    def encrypt_ours(crypten, model, features, device):
        from mpc.models import encrypt_model

        secure = encrypt_model(crypten, model, features)
        if device is not None and torch.device(device).type == "cuda":
            secure = secure.to(device)
        secure.train()
        return secure

    return SystemOps("cotrain", make_epoch, secure_sigmoid, encrypt_ours)


def encrypt(crypten: Any, model: nn.Module, features: int, device: Any) -> Any:
    """CrypTen's own conversion, as a CrypTen user writes it."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        secure = crypten.nn.from_pytorch(model, torch.zeros(1, features))
    secure.encrypt(src=0)
    if device is not None and torch.device(device).type == "cuda":
        secure = secure.to(device)
    secure.train()
    return secure


def secure_setup(name: str, crypten: Any, ops: SystemOps, device: Any,
                 size: int | None = None) -> tuple[Callable[[], Any], Callable[[], float | None] | None]:
    """Share the inputs of workload ``name`` at ``size`` (default ``SIZES[name]``; W7 has one
    size); returns (timed callable, post-run AUC or None)."""
    size = size or SIZES.get(name)
    rank = crypten.communicator.get().get_rank()
    cuda = device is not None and torch.device(device).type == "cuda"

    def share(tensor: torch.Tensor) -> Any:
        return crypten.cryptensor(tensor.to(device) if cuda else tensor, src=0)

    generator = torch.Generator().manual_seed(11)
    if name == "W1":
        x, y = share(torch.randn(size, generator=generator)), share(torch.randn(size, generator=generator))
        return (lambda: x * y), None
    if name in ("W2a", "W2b"):
        a, b = share(torch.randn(size, size, generator=generator)), share(torch.randn(size, size, generator=generator))
        return (lambda: a.matmul(b)), None
    if name == "W3":
        x = share(torch.randn(size, generator=generator))
        return (lambda: x.relu()), None
    if name == "W4":
        x = share(torch.randn(size, generator=generator) * 4)
        return (lambda: ops.sigmoid(x)), None
    if name == "W9":
        from bench.sequence_step import secure_step

        return secure_step(crypten), None
    if name in ("W5", "W6", "W7"):
        kind = "mlp" if name == "W6" else "logreg"
        if name == "W7":
            data = demo_shaped_data()
            batch = 128
        else:
            data, batch = training_data(rows=size), BATCH
        negative, positive = class_weights(data["y"])
        model = ops.encrypt(crypten, torch_model(kind, data["x"].shape[1]), data["x"].shape[1], device)
        x, y, test_x = share(data["x"]), share(data["y"]), share(data["test_x"])
        slices = [slice(s, min(s + batch, data["x"].shape[0])) for s in range(0, data["x"].shape[0], batch)]
        run = ops.make_epoch(crypten, model, negative, positive, LR, x, y, slices)

        def score() -> float | None:
            with crypten.no_grad():
                model.eval()
                logits = model(test_x).get_plain_text(dst=0)
                model.train()
            return auc(logits.cpu(), data["test_y"]) if rank == 0 else None

        return run, score
    raise ValueError(f"unknown workload {name}")


def demo_shaped_data() -> dict[str, torch.Tensor]:
    """The demo job's shape (3 banks x 2,000 rows, 8 features), for systems that cannot run
    ``cotrain run`` itself."""
    return training_data(rows=6000, features=8, seed=3)
