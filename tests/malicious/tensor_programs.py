"""Party-side programs for the authenticated tensor type's tests (importable by spawned processes)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

from mpc.session import MpcSession
from mpc.training import secure_sigmoid
from parties.transport.group import PartyGroup
from protocols import ProtocolSuite
from protocols.malicious.engine import CheatDetected
from protocols.suite import ProtocolConfig

MALICIOUS = ProtocolConfig(name="malicious", triple_source="authenticated_dealer", check="spdz2k_mac")


@contextmanager
def malicious_session(transport: Any, parties: int) -> Iterator[Any]:
    """CrypTen over the parties' own group, with protocol=malicious installed."""
    with MpcSession(PartyGroup(transport, parties), ProtocolSuite(MALICIOUS)) as crypten:
        yield crypten


def inputs(parties: int) -> dict[str, np.ndarray]:
    """Real-shaped operands: mixed magnitudes, a near-zero column, negatives."""
    rng = np.random.default_rng(7)
    x = rng.uniform(-4, 4, (3, 4))
    x[:, 1] *= 1e-3
    return {"x": x, "y": rng.uniform(-4, 4, (3, 4)), "w": rng.uniform(-2, 2, (4, 2)),
            "z": rng.uniform(-20, 20, (2, 5)), "owners": np.array([0, parties - 1, 1 % parties, 0])}


def operations(crypten: Any, x: Any, y: Any, w: Any, z: Any) -> dict[str, Any]:
    """Each operation the trainer and crypten.nn use, on authenticated tensors."""
    return {
        "add": x + y, "sub": x - y, "neg": -x, "add_public": x + 1.5, "rsub_public": 2 - x,
        "mul": x * y, "square": y.square(), "mul_float": x * 0.3, "mul_int": x * 3,
        "mul_tensor": x * torch.tensor([0.5, -1.25, 2.0, 3.0]),
        "div_pow2": x.div(4), "div_int": x.div(7), "div_float": x.div(2.5), "div_large": (x * 2**19).div(2**27),
        "matmul": x.matmul(w), "matmul_vector": x.matmul(w[:, 0]),
        "sum": x.sum(), "sum_dim": x.sum(0), "sum_keepdim": x.sum(1, keepdim=True), "mean": x.mean(1),
        "t": x.t(), "transpose": x.transpose(0, 1), "view": x.view(-1), "reshape": x.reshape(4, 3),
        "getitem": x[1:, 2], "index": x[torch.tensor([2, 0])], "cat": crypten.cat([x, y], dim=1),
        "stack": crypten.stack([x, y]), "expand": x[:1].expand(3, 4), "unsqueeze": x.unsqueeze(0),
        "squeeze": x[:1].squeeze(0), "flatten": x.flatten(), "pad": x.pad((1, 0)),
        "relu": x.relu(), "lt": x.lt(0), "ge": y.ge(0.5), "indicator_mul": x.lt(0) * y,
        "compare_large": (z * 2000).ge(-1000), "sigmoid": secure_sigmoid(z),
    }


def plain_operations(x: np.ndarray, y: np.ndarray, w: np.ndarray, z: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "add": x + y, "sub": x - y, "neg": -x, "add_public": x + 1.5, "rsub_public": 2 - x,
        "mul": x * y, "square": y * y, "mul_float": x * 0.3, "mul_int": x * 3,
        "mul_tensor": x * np.array([0.5, -1.25, 2.0, 3.0]),
        "div_pow2": x / 4, "div_int": x / 7, "div_float": x / 2.5, "div_large": x / 2**8,
        "matmul": x @ w, "matmul_vector": x @ w[:, 0],
        "sum": x.sum(), "sum_dim": x.sum(0), "sum_keepdim": x.sum(1, keepdims=True), "mean": x.mean(1),
        "t": x.T, "transpose": x.T, "view": x.reshape(-1), "reshape": x.reshape(4, 3),
        "getitem": x[1:, 2], "index": x[[2, 0]], "cat": np.concatenate([x, y], 1),
        "stack": np.stack([x, y]), "expand": np.broadcast_to(x[:1], (3, 4)), "unsqueeze": x[None],
        "squeeze": x[0], "flatten": x.reshape(-1), "pad": np.pad(x, ((0, 0), (1, 0))),
        "relu": np.maximum(x, 0), "lt": (x < 0) * 1.0, "ge": (y >= 0.5) * 1.0, "indicator_mul": (x < 0) * y,
        "compare_large": (z * 2000 >= -1000) * 1.0, "sigmoid": 1 / (1 + np.exp(-z)),
    }


def run_operations(transport: Any, rank: int, parties: int) -> dict[str, list]:
    """Every party shares its operands (owners from ``inputs``) and reveals every result."""
    data = inputs(parties)
    owners = [int(o) for o in data["owners"]]
    with malicious_session(transport, parties) as crypten:
        shared = [crypten.cryptensor(torch.tensor(data[name]), src=owner)
                  for name, owner in zip(("x", "y", "w", "z"), owners)]
        types = {type(t).__name__ for t in shared}
        results = operations(crypten, *shared)
        plain = {name: value.get_plain_text() for name, value in results.items()}
        private = results["mul"].get_plain_text(dst=parties - 1)
    out = {name: value.double().numpy().tolist() for name, value in plain.items()}
    out["_types"] = sorted(types)
    out["_private"] = None if private is None else private.double().numpy().tolist()
    return out


def tampered_reveal(transport: Any, rank: int, parties: int, cheater: int) -> str:
    """``cheater`` adds 1 to its value share of a product before it is revealed; every
    party must stop with CheatDetected at that reveal."""
    data = inputs(parties)
    with malicious_session(transport, parties) as crypten:
        x = crypten.cryptensor(torch.tensor(data["x"]), src=0)
        y = crypten.cryptensor(torch.tensor(data["y"]), src=parties - 1)
        product = x * y
        if rank == cheater:
            share = product.share
            share[0, 0, 0] += 1  # the value's low limb: one unit of u
            product.share = share
        try:
            product.get_plain_text()
        except CheatDetected as error:
            return f"detected: {error.check}"
    return "missed"


def disagreement(transport: Any, rank: int, parties: int, liar: int) -> str:
    """``liar`` holds other public facts (e.g. scaling statistics) than the rest; every party
    must stop at the agreement."""
    from protocols.malicious.cryptensor import AuthenticatedTensor

    with malicious_session(transport, parties):
        try:
            AuthenticatedTensor.agree("statistics", b"mean 0.5" if rank != liar else b"mean 0.7")
        except CheatDetected as error:
            return f"detected: {error.check}"
        AuthenticatedTensor.agree("statistics", b"the same everywhere")
    return "missed"


def _tampered_opening(crypten: Any, target: str, x: Any, y: Any) -> None:
    """A computation whose first message of kind ``target`` a tampering party alters."""
    from protocols.malicious.cryptensor import AuthenticatedTensor

    if target == "bmatmul":
        x.reshape(2, 2, 3).matmul(y.reshape(2, 3, 2)).get_plain_text()
    elif target == "conv":
        x.reshape(1, 1, 3, 4).conv2d(y.reshape(2, 1, 3, 2)[:, :, :2, :]).get_plain_text()
    else:  # verify: shares kept, checked without being revealed
        AuthenticatedTensor.verify([x * y])


def tampered_openings(transport: Any, rank: int, parties: int, targets: list[str], trials: int) -> list[tuple]:
    """For each target, ``trials`` times in one session: a party (the trial's number mod
    ``parties``) alters its share in the message of that kind (``adversary.Adversary``); the
    check that stopped this party, per (target, trial)."""
    from adversary import Adversary, TamperingEngine
    from protocols.malicious.cryptensor import current_engine

    data = inputs(parties)
    outcomes = []
    with malicious_session(transport, parties) as crypten:
        engine = current_engine()
        engine.__class__ = TamperingEngine  # the production engine, with the adversary's hooks
        for target in targets:
            for trial in range(trials):
                x = crypten.cryptensor(torch.tensor(data["x"]), src=0)
                y = crypten.cryptensor(torch.tensor(data["y"]), src=parties - 1)
                engine.adversary = Adversary(target, seed=trial) if rank == trial % parties else None
                try:
                    _tampered_opening(crypten, target, x, y)
                    outcomes.append((target, trial, "missed"))
                except CheatDetected as error:
                    engine.discard_preprocessing()
                    outcomes.append((target, trial, error.check))
        engine.adversary = None
    return outcomes


def two_models(rows: int = 16, batch: int = 8, seed: int = 3) -> tuple[Any, Any, torch.Tensor, torch.Tensor]:
    """An MLP and a logistic regression (fixed initial weights) and real-shaped rows: a
    near-constant column beside a wide one, an offset column, labels from a linear rule."""
    torch.manual_seed(seed)
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    logreg = torch.nn.Linear(4, 1)
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (rows, 4))
    x[:, 1] = 1e-3 * x[:, 1] + 0.5
    x[:, 2] = 3.0 * x[:, 2] - 2.0
    y = (x[:, 0] + 0.3 * x[:, 2] + rng.normal(0, 0.5, rows) > -0.6).astype(np.float64)
    return mlp, logreg, torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32).reshape(-1, 1)


def train_two_models_one_batch_size(transport: Any, rank: int, parties: int, lr: float, batch: int,
                                    order: list[int]) -> dict[str, np.ndarray]:
    """In one session, the MLP and then the logistic regression trained one epoch each on
    ``order``'s rows with batches of the same size (the bench's W5 and W6, or two models in
    one user's script): each trainer plans its own steps. The regression's weights, revealed."""
    from mpc.losses import WeightedBinaryCrossEntropy
    from mpc.metrics import ClassWeights
    from mpc.models import encrypt_model
    from mpc.training import SecureTrainer, TrainConfig

    mlp, logreg, x, y = two_models()
    x, y = x[order], y[order]
    loss = WeightedBinaryCrossEntropy(ClassWeights(negative=1.0, positive=1.0))
    with malicious_session(transport, parties) as crypten:
        features, labels = crypten.cryptensor(x, src=0), crypten.cryptensor(y, src=0)
        scales = loss.row_scales(labels)
        for model in (mlp, logreg):
            secure = encrypt_model(crypten, model, x.shape[1])
            secure.train()
            trainer = SecureTrainer(crypten, secure, TrainConfig(lr=lr, batch_size=batch), loss, seed=0,
                                    stats=None, show_progress=False)
            for start in range(0, len(order), batch):
                rows = slice(start, start + batch)
                with trainer.planned("step", features, batch):
                    trainer.step(features[rows], labels[rows], scales[rows])
        return {name: parameter.get_plain_text().numpy() for name, parameter in secure.named_parameters()}
