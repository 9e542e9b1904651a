"""Party-side training programs for the malicious-suite tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from adversary import TamperingEngine
from protocols.malicious.engine import Engine
from protocols.malicious.train import LocalData, MaliciousTrainConfig, train_logreg


def make_data(parties: int, rows: int, width: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.normal(0, 1.5, width)
    xs, ys = [], []
    for party in range(parties):
        x = rng.normal(party * 0.3, 1 + 0.5 * party, (rows, width)) * rng.uniform(0.5, 20, width) + rng.normal(0, 5, width)
        z = ((x - x.mean(0)) / x.std(0)) @ truth - 1.0
        y = (rng.uniform(size=rows) < 1 / (1 + np.exp(-z))).astype(np.float64)
        xs.append(x)
        ys.append(y)
    initial = rng.uniform(-0.3, 0.3, width + 1)
    return xs, ys, initial


def mlp_layers(width: int, hidden: tuple[int, ...], seed: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = [width, *hidden, 1]
    return [rng.uniform(-1, 1, (a + 1, b)) / np.sqrt(a) for a, b in zip(sizes[:-1], sizes[1:])]


def train_party(transport: Any, rank: int, parties: int, rows: int, width: int, epochs: int, batch: int,
                authenticated: bool = True, adversary: Any = None, cheater: int = -1,
                test_rows: int = 0, hidden: tuple[int, ...] = ()) -> dict:
    xs, ys, initial = make_data(parties, rows, width)
    if hidden:
        initial = mlp_layers(width, hidden)
    test_x = make_data(1, test_rows, width, seed=99)[0][0] if test_rows and rank == 0 else None
    engine = TamperingEngine(transport, parties, dealer=parties, authenticated=authenticated)
    engine.adversary = adversary if rank == cheater else None
    config = MaliciousTrainConfig(epochs=epochs, batch_size=batch, lr=0.5, reveal_to=list(range(parties)))
    try:
        result = train_logreg(engine, LocalData(xs[rank], ys[rank], test_x, None), initial, config)
    finally:
        engine.close()
    return {"weights": result.revealed.tolist(), "seconds": result.seconds, "stats": result.stats,
            "bytes": transport.stats.bytes_sent, "history": [(h.seconds, h.rounds, h.bytes_sent) for h in result.history],
            "test_logits": None if result.history[-1].test_logits is None else result.history[-1].test_logits.tolist()}


def sigmoid_party(transport: Any, rank: int, parties: int, grid: list[float]) -> list[float]:
    """The training sigmoid as evaluated: authenticated shares of ``grid`` (party 0's input)."""
    from protocols.malicious.train import sigmoid

    engine = Engine(transport, parties, dealer=parties)
    try:
        z = engine.input(np.asarray(grid)[:, None] if rank == 0 else None, (len(grid), 1), 0)
        return engine.reveal(sigmoid(engine, z)).reshape(-1).tolist()
    finally:
        engine.close()
