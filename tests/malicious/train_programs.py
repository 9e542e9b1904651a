"""Party-side training programs for the malicious-suite tests: SecureTrainer (the one trainer
of every suite) on authenticated shares, optionally with one party deviating once."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from adversary import Adversary, TamperingEngine
from mpc.data.sharing import SharedDataset
from mpc.losses import task_loss
from mpc.models import build_torch_model, encrypt_model
from mpc.training import SecureTrainer, TrainConfig
from protocols.malicious.cryptensor import current_engine
from tensor_programs import malicious_session


def make_data(parties: int, rows: int, width: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Standardised-looking rows per party (each its own offset and spread) and 0/1 labels."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(0, 1.5, width)
    xs, ys = [], []
    for party in range(parties):
        x = rng.normal(party * 0.3, 1 + 0.3 * party, (rows, width))
        y = (rng.uniform(size=rows) < 1 / (1 + np.exp(-(x @ truth - 1.0)))).astype(np.float64)
        xs.append(x)
        ys.append(y)
    return xs, ys


def train_party(transport: Any, rank: int, parties: int, rows: int, width: int, epochs: int, batch: int,
                adversary: Adversary | None = None, cheater: int = -1, hidden: tuple[int, ...] = ()) -> list[float]:
    """Every party shares its rows and trains; the weights are revealed to all at the end."""
    xs, ys = make_data(parties, rows, width)
    with malicious_session(transport, parties) as crypten:
        engine = current_engine()
        engine.__class__ = TamperingEngine  # the production engine, with the adversary's hooks
        engine.adversary = adversary if rank == cheater else None
        features = crypten.cat([crypten.cryptensor(torch.tensor(x), src=owner) for owner, x in enumerate(xs)])
        labels = crypten.cat([crypten.cryptensor(torch.tensor(y).reshape(-1, 1), src=owner)
                              for owner, y in enumerate(ys)])
        total = rows * parties
        train = SharedDataset(features, labels, [f"x{i}" for i in range(width)], total, [], int(sum(y.sum() for y in ys)))
        spec = {"_target_": "mpc.zoo.MLP", "hidden": list(hidden)} if hidden else {"_target_": "mpc.zoo.LogisticRegression"}
        model = encrypt_model(crypten, build_torch_model(spec, width, seed=0), width)
        loss = task_loss("binary", 2, total, train.positive_count)
        trainer = SecureTrainer(crypten, model, TrainConfig(epochs=epochs, batch_size=batch, lr=0.5), loss, 0,
                                transport.stats, show_progress=False)
        trainer.fit(train, None)
        return [float(v) for p in model.parameters() for v in p.get_plain_text().reshape(-1)]
