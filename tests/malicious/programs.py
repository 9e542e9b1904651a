"""Party-side programs for the malicious-suite tests (importable by spawned processes)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from protocols.malicious.adversary import Adversary
from protocols.malicious.engine import CheatDetected, Engine

N, D = 4, 3


def trial_data(trial: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(trial)
    x = rng.uniform(-4, 4, (N, D))
    w = rng.uniform(-2, 2, (D, 1))
    s = rng.uniform(-3, 3, (N, 1))
    return x, w, s


def trial(engine: Engine, rank: int, parties: int, index: int) -> np.ndarray | None:
    """One small fresh computation: y = relu(X @ W) * s, revealed to all; every kind of
    step (input, matmul, comparison, mul, truncation, reveal) is in it."""
    x, w, s = trial_data(index)
    with engine.planned("trial"):  # the first (honest) trial records the tuples, later ones prefetch
        return _trial(engine, rank, parties, x, w, s)


def _trial(engine: Engine, rank: int, parties: int, x: np.ndarray, w: np.ndarray, s: np.ndarray) -> np.ndarray:
    xs = engine.input(x if rank == 0 else None, (N, D), 0)
    ws = engine.input(w if rank == 1 % parties else None, (D, 1), 1 % parties)
    ss = engine.input(s if rank == parties - 1 else None, (N, 1), parties - 1)
    z = engine.matmul(xs, ws)
    a, _ = engine.relu(z)
    y = engine.mul(a, ss)
    return engine.reveal(y)


def expected(index: int) -> np.ndarray:
    x, w, s = trial_data(index)
    return np.maximum(x @ w, 0) * s


def plan(trial_index: int, parties: int) -> tuple[int, Adversary]:
    """Who cheats in this trial, and how (the same on every party)."""
    rng = random.Random(1000 + trial_index)
    events = {"mul": 9, "matmul": 1, "trunc": 2, "compare": 1, "reveal": 1, "open": 1,
              "tuple:triple": 9, "tuple:matmul": 1, "tuple:trunc": 2, "tuple:bits": 1}
    target = rng.choice(sorted(events) + (["input"] if parties >= 3 else []))
    if target == "input":
        cheater = rng.choice([0, 1])  # the owners of X and W
        at = 0
    else:
        cheater = rng.randrange(parties)
        at = rng.randrange(events[target])
    adversary = Adversary(target, at=at, seed=trial_index, mac=target.startswith("tuple:") and rng.random() < 0.25)
    return cheater, adversary


def detection_trials(transport: Any, rank: int, parties: int, trials: int, honest_every: int) -> dict:
    """Run ``trials`` fresh computations in one set of processes. Every ``honest_every``-th
    is honest (and must be right); in the others one party cheats once."""
    engine = Engine(transport, parties, dealer=parties)
    outcome = {"detected": [], "undetected": [], "honest_errors": [], "honest": 0, "checks": {}}
    try:
        for index in range(trials):
            honest = index % honest_every == 0
            cheater, adversary = plan(index, parties)
            engine.adversary = adversary if (not honest and rank == cheater) else None
            try:
                result = trial(engine, rank, parties, index)
            except CheatDetected as error:
                engine.discard_preprocessing()
                if honest:
                    outcome["honest_errors"].append((index, str(error)))
                else:
                    outcome["detected"].append((index, cheater, adversary.target, error.check, error.party))
                    outcome["checks"][error.check] = outcome["checks"].get(error.check, 0) + 1
                continue
            if honest:
                outcome["honest"] += 1
                outcome.setdefault("max_error", 0.0)
                outcome["max_error"] = max(outcome["max_error"], float(np.abs(result - expected(index)).max()))
            else:
                outcome["undetected"].append((index, cheater, adversary.target, result.tolist()))
    finally:
        engine.adversary = None
        engine.close()
    return outcome


def faulty_dealer_trials(transport: Any, rank: int, parties: int, trials: int) -> dict:
    """Run ``trials`` fresh computations (tuples fetched on demand, one dealer answer per
    tuple) against a dealer that makes some triples wrong. Per trial: the range of
    triple-kind tuples this party received (so the test can tell which trials got a
    corrupted one), and the outcome."""
    engine = Engine(transport, parties, dealer=parties)
    outcome = {"trials": []}
    try:
        for index in range(trials):
            first = engine.stats.sacrificed_tuples
            try:
                result = _trial(engine, rank, parties, *trial_data(index))
            except CheatDetected as error:
                engine.discard_preprocessing()
                outcome["trials"].append((index, first, engine.stats.sacrificed_tuples, "detected", error.check))
                continue
            error_size = float(np.abs(result - expected(index)).max())
            outcome["trials"].append((index, first, engine.stats.sacrificed_tuples, "ok", error_size))
    finally:
        engine.close()
    outcome["stats"] = engine.stats.as_dict()
    return outcome
