"""W9: one fine-tuning step of the sequence job's transformer (``conf/job/sequence.yaml``:
``mpc.zoo.SequenceClassifier`` at its demo size, one batch of ``train.batch_size`` customers),
secure and in plaintext torch, and where the secure step's rounds go, by layer kind.

The rounds are attributed by the call stack at each round the transport counts
(:func:`count_rounds_by_kind`): inside LayerNorm (forward or its hand-written backward), the
attention softmax, GELU, a matrix product (the embedding, the projections, attention's two
products, the feed-forward and head layers, and their gradients), or anything else (the
loss gradient's sigmoid, pooling, the update, truncations outside those).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("LayerNorm", "attention softmax", "matmuls", "GELU", "rest")
# (kind, file, function) of the frames that mark a kind; the first kind found on the stack wins
_MARKERS = (
    ("LayerNorm", "mpc/layers.py", "layer_norm"),
    ("attention softmax", "mpc/layers.py", "softmax_last"),
    ("GELU", "mpc/layers.py", "gelu"),
)
_PRODUCTS = ("matmul", "conv1d", "conv2d")


def sequence_job() -> dict:
    """The sequence job's settings as ``cotrain run job=sequence`` uses them."""
    return yaml.safe_load((ROOT / "conf" / "job" / "sequence.yaml").read_text())


def step_batch(job: dict, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of bank 1's customers, one-hot encoded as the job shares them."""
    from mpc.data.sequences import labels_column, one_hot_rows
    from mpc.data.synthetic import LABEL
    from mpc.data.synthetic_sequences import generate_sequences

    data = job["data"]
    frame = generate_sequences(1, job["train"]["batch_size"], seed)
    return one_hot_rows(frame, data["length"], data["vocabulary"], "bank1", None).float(), labels_column(frame, LABEL).float()


def torch_model(job: dict, features: int) -> torch.nn.Module:
    from mpc.models import build_torch_model

    return build_torch_model(job["model"], features, seed=0)


def _loss(labels: torch.Tensor) -> Any:
    from mpc.losses import WeightedBinaryCrossEntropy
    from mpc.metrics import ClassWeights

    rows, positive = labels.numel(), max(float(labels.sum()), 1.0)
    return WeightedBinaryCrossEntropy(ClassWeights(negative=rows / (2 * (rows - positive)), positive=rows / (2 * positive)))


def configuration(job: dict) -> str:
    model = job["model"]
    return (f"{model['layers']} layers, d_model {model['d_model']}, {model['heads']} heads, feed-forward "
            f"{model['feedforward']}, {model['length']} tokens, batch {job['train']['batch_size']}, "
            f"sgd lr {job['train']['lr']}")


def plaintext_step() -> Callable[[], None]:
    """The same step in torch: forward, the weighted BCE, backward, an SGD update."""
    job = sequence_job()
    x, y = step_batch(job)
    model = torch_model(job, x.shape[1])
    loss = _loss(y)
    optimizer = torch.optim.SGD(model.parameters(), lr=job["train"]["lr"])

    def run() -> None:
        optimizer.zero_grad()
        loss.plaintext(model(x), y).backward()
        optimizer.step()

    return run


def secure_step(crypten: Any) -> Callable[[], None]:
    """The secure step as the job runs it (``SecureTrainer.step``); the batch is shared by party 1."""
    from mpc.models import encrypt_model
    from mpc.training import SecureTrainer, TrainConfig

    job = sequence_job()
    x, y = step_batch(job)
    model = encrypt_model(crypten, torch_model(job, x.shape[1]), x.shape[1])
    model.train()
    loss = _loss(y)
    train = job["train"]
    trainer = SecureTrainer(crypten, model, TrainConfig(lr=train["lr"], batch_size=train["batch_size"]), loss,
                            seed=0, stats=None, show_progress=False)
    features, labels = crypten.cryptensor(x, src=1), crypten.cryptensor(y, src=1)
    scales = loss.row_scales(labels)
    return lambda: trainer.step(features, labels, scales)


def _kind_of(frame: Any) -> str:
    """The layer kind of the computation whose round is being counted (``frame`` the counter's caller)."""
    product = False
    while frame is not None:
        code = frame.f_code
        outer = code.co_qualname.split(".", 1)[0]
        for kind, path, function in _MARKERS:
            if outer == function and code.co_filename.endswith(path):
                return kind
        product = product or code.co_name in _PRODUCTS
        frame = frame.f_back
    return "matmuls" if product else "rest"


def count_rounds_by_kind(stats: Any) -> dict[str, int]:
    """Attribute every later change of ``stats.rounds`` to a layer kind; returns the live counts
    (a collective that resets the count to one round nets out the same way)."""
    from bench.round_profile import watch_rounds

    counts = dict.fromkeys(KINDS, 0)

    def count(frame: Any, change: int) -> None:
        counts[_kind_of(frame)] += change

    watch_rounds(stats, count)
    return counts
