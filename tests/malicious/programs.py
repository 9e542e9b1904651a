"""Party-side programs for the malicious-suite tests (importable by spawned processes)."""

from __future__ import annotations

import random
import time
from typing import Any

import numpy as np
import torch

from adversary import Adversary, TamperingEngine
from protocols.dealer_wire import DealerError
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
    events = {"mul": 8, "matmul": 1, "trunc": 2, "compare": 1, "reveal": 1, "open": 1, "coins": 1, "tuple-check": 1,
              "tuple:triple": 8, "tuple:matmul": 1, "tuple:trunc": 2, "tuple:bits": 1}
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
    engine = TamperingEngine(transport, parties, dealer=parties)
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


def _uses(kind: str, engine: Engine, rank: int, parties: int, x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """A tiny computation whose first tuple of ``kind`` comes after tuples of other kinds
    (except for ``input``), fetched on demand (one dealer answer per tuple)."""
    xs = engine.input(x if rank == 0 else None, x.shape, 0)
    if kind == "input":
        return engine.reveal(xs)
    if kind == "private":
        return engine.reveal(xs, to=parties - 1)
    if kind == "bits":
        return engine.reveal(engine.mul_int(engine.ltz(xs), 1 << 16))  # the 0/1 integers in fixed point
    if kind == "trunc":
        return engine.reveal(engine.mul_const(xs, 0.75))
    ys = engine.input(y if rank == 1 else None, y.shape, 1)
    if kind == "triple":
        return engine.reveal(engine.mul(xs, ys))
    if kind == "bmatmul":  # the rows of x times y's rows, one product per row
        return engine.reveal(engine.bilinear(["bmatmul", 3, 1, 4, 1], xs.reshape(3, 1, 4), ys.reshape(3, 4, 1)))
    if kind == "conv":  # x as one 3 x 4 image, y's first row as a 2 x 2 kernel
        spec = ["conv", [1, 1, 3, 4], [1, 1, 2, 2], [1, 1], [0, 0], [1, 1], 1]
        return engine.reveal(engine.bilinear(spec, xs.reshape(1, 1, 3, 4), ys[0].reshape(1, 1, 2, 2)))
    return engine.reveal(engine.matmul(xs, ys.T))


def expected_use(kind: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    conv = torch.nn.functional.conv2d(torch.tensor(x).reshape(1, 1, 3, 4), torch.tensor(y[0]).reshape(1, 1, 2, 2))
    return {"input": x, "private": x, "bits": (x < 0).astype(np.float64), "trunc": 0.75 * x,
            "triple": x * y, "matmul": x @ y.T, "bmatmul": (x * y).sum(1).reshape(3, 1, 1),
            "conv": conv.numpy()}[kind]


def use_data(trial: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(500 + trial)
    return rng.uniform(-50, 50, (3, 4)), rng.uniform(-50, 50, (3, 4))


def lying_dealer_trials(transport: Any, rank: int, parties: int, kinds: list[str], trials: int) -> dict:
    """For each kind, ``trials`` tiny computations that use it (the dealer lies about that
    kind in each of them), then one honest computation per kind. Per trial: the check that
    stopped it and its message, or the revealed value (a miss)."""
    started = time.perf_counter()
    engine = Engine(transport, parties, dealer=parties)
    outcome: dict = {"lied": [], "honest": []}
    try:
        for kind in kinds + ["honest"]:
            for index in range(trials if kind != "honest" else len(kinds)):
                used = kind if kind != "honest" else kinds[index]
                x, y = use_data(index)
                try:
                    result = _uses(used, engine, rank, parties, x, y)
                except CheatDetected as error:
                    engine.discard_preprocessing()
                    (outcome["lied"] if kind != "honest" else outcome["honest"]).append(
                        (used, "detected", error.check, str(error)))
                    continue
                if kind == "honest":
                    error_size = None if result is None else float(np.abs(result - expected_use(used, x, y)).max())
                    outcome["honest"].append((used, "ok", error_size, None))
                else:
                    outcome["lied"].append((used, "missed", None, None if result is None else result.tolist()))
    finally:
        engine.close()
    outcome["stats"] = engine.stats.as_dict()
    outcome["seconds"] = time.perf_counter() - started
    return outcome


def steering_request(transport: Any, rank: int, parties: int) -> str:
    """Every party asks the dealer for a triple, the last one for a different shape (as a
    party steering the others' preprocessing would); what each party is told."""
    engine = Engine(transport, parties, dealer=parties)
    try:
        engine.preprocess([["triple", [2, 2] if rank < parties - 1 else [3, 1]]])
    except DealerError as error:
        return str(error)
    return "dealt"


def cut_answers(transport: Any, rank: int, parties: int, limit: int) -> dict:
    """``x * y`` (two 3 x 4 inputs, a truncated product, revealed) with dealer answers of at
    most ``limit`` elements: first fetched on demand from a dealer lying in a later answer
    (``LyingDealer`` with ``skip``), then honestly as a planned block, run twice (recorded,
    then from its plan). The engine's traffic per phase, beside the transport's count of it."""
    before = transport.stats.bytes_sent + transport.stats.bytes_received  # joining the transport
    engine = Engine(transport, parties, dealer=parties, answer_elements=limit)
    x, y = use_data(0)
    outcome: dict = {"runs": []}
    try:
        try:
            outcome["lied"] = ("missed", _uses("triple", engine, rank, parties, x, y).tolist())
        except CheatDetected as error:
            engine.discard_preprocessing()
            outcome["lied"] = ("detected", error.check, str(error))
        for _ in range(2):
            answers, checks = engine.stats.dealer_requests, engine.stats.tuple_checks
            with engine.planned("product"):
                result = _uses("triple", engine, rank, parties, x, y)
            outcome["runs"].append({"error": float(np.abs(result - expected_use("triple", x, y)).max()),
                                    "answers": engine.stats.dealer_requests - answers,
                                    "checks": engine.stats.tuple_checks - checks})
        outcome["traffic"] = engine.stats.as_dict()["traffic"]
        outcome["rounds"] = engine.stats.rounds
        outcome["dealer_answers"] = engine.stats.dealer_requests
        outcome["transport_bytes"] = transport.stats.bytes_sent + transport.stats.bytes_received - before
    finally:
        engine.close()
    return outcome
