"""Secure logistic-regression (and MLP) training on authenticated shares (``protocol=malicious``).

Same semantics as the semi-honest CrypTen path (``mpc.training``, horizontal split):

1. Each party announces its row count; the pooled per-feature mean and standard deviation
   and the pooled positive count are computed from authenticated inputs of every party's
   column sums and sums of squares (divided by the public total) and revealed after a MAC
   check; each party standardises its own rows with them.
2. Each party inputs its own rows (authenticated input sharing: it opens ``x - r`` for a
   dealer mask ``r`` only it knows in clear). A constant-1 column carries the bias.
3. SGD with the public per-epoch row order, ``g = w(y) * (sigmoid(z) - y)``, update
   ``W -= lr / batch * X^T g``. ``w(y)`` (the balanced class weight) is computed once.
4. The sigmoid is the degree-5 odd polynomial fitted by least squares to the logistic
   function on [-12, 12] (``SIGMOID_COEFFICIENTS``): additions, four multiplication
   rounds and truncations only. It is evaluated in t = z / 16 (an exact shift), with the
   coefficients rescaled to t (``SIGMOID_SCALED``: about 2.4, -7.4 and 8.3, where the
   z^5 coefficient, 7.9e-6, lies below the ring's resolution 2^-16 and would be encoded
   as one unit, twice its value, an error of up to 1.9 at |z| = 12). Its largest error
   on [-12, 12] is ``SIGMOID_MAX_ERROR`` (0.103, the fit's) plus the fixed point's
   ``SIGMOID_FIXED_POINT_ERROR`` (a bound, 1.3e-3); tested as evaluated in
   ``tests/malicious/test_malicious_sigmoid.py``. It is valid on [-12, 12] only: outside, it follows
   the diverging polynomial (1.36 at z = 13, 2.58 at 15, 146 at 30: errors 0.36, 1.58,
   145), and the ring overflows beyond |z| of about 650. On the default job the training logits
   reach about +-15 in early steps and the held-out AUC matches the exact sigmoid's
   within 0.01 (0.838 vs 0.835 in float).
5. After each epoch (and before anything is revealed or returned) every opening made so far
   is MAC-checked; held-out logits go to the evaluator only; the trained weight shares are
   themselves verified (opened under a random authenticated mask, then MAC-checked) and
   revealed only to the parties named in ``reveal_to``, after a final check. Any failed
   check raises :class:`~protocols.malicious.engine.CheatDetected` on every party.
6. ``model=mlp``: hidden layers with ReLU. ReLU and its derivative come from the engine's
   authenticated comparison (``Engine.ltz``: edaBit-style dealer bits, a log-depth bit
   comparison made of authenticated products), valid for pre-activations below 2^15 in
   magnitude. It is exact but costly (156 bit products per ReLU).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from protocols.malicious.engine import AShare, Engine, cat, encode
from protocols.malicious.ring import U128

log = logging.getLogger("cotrain.malicious.train")

SIGMOID_RANGE = 12.0
SIGMOID_DEGREE = 5


def _fit_sigmoid() -> tuple[np.ndarray, float]:
    z = np.linspace(-SIGMOID_RANGE, SIGMOID_RANGE, 4801)
    powers = np.arange(1, SIGMOID_DEGREE + 1, 2)
    target = 1.0 / (1.0 + np.exp(-z)) - 0.5
    coefficients, *_ = np.linalg.lstsq(z[:, None] ** powers, target, rcond=None)
    error = float(np.abs((z[:, None] ** powers) @ coefficients - target).max())
    return coefficients, error


SIGMOID_COEFFICIENTS, SIGMOID_MAX_ERROR = _fit_sigmoid()  # for z, z^3, z^5
# evaluated in t = z / 2^SIGMOID_SHIFT, so that every coefficient lies well above 2^-16
SIGMOID_SHIFT = 4
SIGMOID_SCALED = SIGMOID_COEFFICIENTS * (2.0 ** SIGMOID_SHIFT) ** np.arange(1, SIGMOID_DEGREE + 1, 2)
# Fixed point on [-12, 12] (|t| <= 3/4): t is within 1 ulp (one truncation), t^k within
# (k + 1) ulps (each product's truncation, and the factors' errors times |t| <= 1), each
# encoded coefficient within 1/2 ulp (times |t|^k <= 1), and the sum's truncation 1 ulp.
SIGMOID_FIXED_POINT_ERROR = (float(np.abs(SIGMOID_SCALED) @ (np.arange(1, SIGMOID_DEGREE + 1, 2) + 1.0))
                             + 0.5 * len(SIGMOID_SCALED) + 1) * 2.0 ** -16


def sigmoid_poly_plain(z: np.ndarray) -> np.ndarray:
    """The same polynomial in float (for plaintext references)."""
    z = np.asarray(z, dtype=np.float64)
    return 0.5 + sum(c * z ** p for c, p in zip(SIGMOID_COEFFICIENTS, range(1, SIGMOID_DEGREE + 1, 2)))


MODELS = ("logreg", "mlp")


class UnsupportedModel(ValueError):
    """The model needs an operation protocol=malicious does not provide yet."""


def check_model(kind: str) -> None:
    if kind not in MODELS:
        raise UnsupportedModel(f"model={kind} is not available under protocol=malicious; "
                               f"choose one of {', '.join(MODELS)}")


@dataclass
class MaliciousTrainConfig:
    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.5
    seed: int = 0
    evaluator: int = 0
    reveal_to: list[int] = field(default_factory=list)  # ranks that receive the trained weights


@dataclass
class LocalData:
    """This party's own rows (raw, unscaled); ``None`` where it has none."""

    features: np.ndarray | None
    labels: np.ndarray | None
    test_features: np.ndarray | None = None
    test_labels: np.ndarray | None = None


@dataclass
class EpochResult:
    epoch: int
    seconds: float
    rounds: int
    bytes_sent: int
    test_logits: np.ndarray | None = None  # at the evaluator only


@dataclass
class TrainResult:
    weights: Any  # logreg: one AShare (features + 1) x 1, bias last; MLP: a list, one per layer
    revealed: np.ndarray | None  # at the parties in reveal_to: every layer flattened, in order
    history: list[EpochResult]
    rows: int
    positives: int
    mean: np.ndarray
    std: np.ndarray
    seconds: float
    stats: dict


def epoch_order(rows: int, seed: int, epoch: int) -> np.ndarray:
    """The public row order of one epoch (the same formula as ``mpc.training.epoch_order``)."""
    return np.random.default_rng([seed, epoch]).permutation(rows)


def sigmoid(engine: Engine, z: AShare) -> AShare:
    """The polynomial of point 4 in t = z / 16, valid for z in [-12, 12]."""
    t = engine.trunc(engine.mul_int(z, 1 << (16 - SIGMOID_SHIFT)))  # z / 16, within 1 ulp
    t2 = engine.mul(t, t)
    t3, t4 = engine.mul_many([(t2, t), (t2, t2)])
    t5 = engine.mul(t4, t)
    a1, a3, a5 = (int(v) for v in encode(SIGMOID_SCALED))
    acc = engine.mul_int(t, a1) + engine.mul_int(t3, a3) + engine.mul_int(t5, a5)
    return engine.add_const(engine.trunc(acc), 0.5)


def _public(engine: Engine, values: np.ndarray) -> AShare:
    """A public matrix as an authenticated sharing."""
    return engine.add_public(engine.zeros(values.shape), U128.from_int64(encode(values)))


def _input_rows(engine: Engine, rank: int, counts: dict[int, list[int]], width: int,
                values: np.ndarray | None) -> AShare | None:
    pieces = []
    for owner in sorted(counts):
        rows = counts[owner]
        if rows:
            pieces.append(engine.input(values if owner == rank else None, (rows, width), owner))
    return cat(pieces) if pieces else None


def as_layers(initial: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """Layer matrices (inputs + 1) x outputs, the bias in the last row. A flat vector is a
    logistic regression's weights with the bias last."""
    if isinstance(initial, np.ndarray) and initial.ndim == 1:
        return [np.asarray(initial, np.float64).reshape(-1, 1)]
    return [np.asarray(layer, np.float64) for layer in initial]


def layers_from_torch(model: Any) -> list[np.ndarray]:
    """The Linear layers of a ``torch.nn.Sequential`` (Linear/ReLU) as layer matrices."""
    layers = []
    for module in model:
        if hasattr(module, "weight"):
            weight = module.weight.detach().double().numpy()
            layers.append(np.concatenate([weight.T, module.bias.detach().double().numpy()[None, :]], axis=0))
    return layers


def train_logreg(engine: Engine, local: LocalData, initial: np.ndarray | Sequence[np.ndarray],
                 config: MaliciousTrainConfig,
                 on_epoch: Callable[[EpochResult], None] | None = None,
                 on_scaling: Callable[[int, int], None] | None = None) -> TrainResult:
    """Every party runs this with its own ``local`` rows; ``initial`` is the public initial
    model: a logistic regression's features + 1 weights (bias last), or an MLP's layer
    matrices (``as_layers``; ReLU between layers, through authenticated comparisons)."""
    started = time.perf_counter()
    rank = engine.rank
    initial_layers = as_layers(initial)
    width = initial_layers[0].shape[0] - 1
    x_own = None if local.features is None else np.asarray(local.features, np.float64).reshape(-1, width)
    y_own = None if local.labels is None else np.asarray(local.labels, np.float64).reshape(-1, 1)
    own_rows = 0 if x_own is None else x_own.shape[0]
    own_test = 0 if local.test_features is None else int(np.asarray(local.test_features).shape[0])
    meta = engine.exchange_public([own_rows, width, own_test])
    if any(m[1] != width for m in meta.values()):
        raise ValueError(f"the parties disagree on the number of features: {[meta[r][1] for r in sorted(meta)]}")
    rows = {r: meta[r][0] for r in meta}
    test_rows = {r: meta[r][2] for r in meta}
    total = sum(rows.values())
    if total == 0:
        raise ValueError("no party has training rows")

    # 1. pooled scaling statistics (revealed after a MAC check)
    stats = np.zeros(2 * width + 1)
    if own_rows:
        stats = np.concatenate([x_own.sum(0) / total, (x_own ** 2).sum(0) / total, [y_own.sum() / total]])
    pooled = None
    for owner in sorted(rows):
        share = engine.input(stats[None, :] if owner == rank else None, (1, 2 * width + 1), owner)
        pooled = share if pooled is None else pooled + share
    revealed = engine.reveal(pooled)[0]
    mean, mean_square = revealed[:width], revealed[width:2 * width]
    std = np.sqrt(np.clip(mean_square - mean ** 2, 0, None))
    std[std < 1e-6] = 1.0
    positives = int(round(revealed[-1] * total))
    if on_scaling is not None:
        on_scaling(total, positives)
    w_neg = total / (2.0 * max(total - positives, 1))
    w_pos = total / (2.0 * max(positives, 1))

    # 2. authenticated input of every party's rows; a ones column for the bias
    scaled = None if x_own is None else (x_own - mean) / std
    features = _input_rows(engine, rank, rows, width, scaled)
    labels = _input_rows(engine, rank, rows, 1, y_own)
    features = cat([features, _public(engine, np.ones((total, 1)))], axis=1)
    row_weights = engine.add_const(engine.mul_const(labels, w_pos - w_neg), w_neg)
    test = None
    if sum(test_rows.values()):
        test_scaled = None if local.test_features is None else (np.asarray(local.test_features, np.float64) - mean) / std
        test = _input_rows(engine, rank, test_rows, width, test_scaled)
        test = cat([test, _public(engine, np.ones((sum(test_rows.values()), 1)))], axis=1)
    weights = [_public(engine, layer) for layer in initial_layers]
    engine.check()  # the data are in; a failed input stops everyone here

    history: list[EpochResult] = []
    for epoch in range(config.epochs):
        epoch_start = time.perf_counter()
        rounds_before, bytes_before = engine.stats.rounds, engine.comm.stats.bytes_sent
        order = epoch_order(total, config.seed, epoch)
        for start in range(0, total, config.batch_size):
            index = order[start:start + config.batch_size]
            with engine.planned(("step", len(index))):
                weights = _step(engine, features[index], labels[index], row_weights[index], weights, config.lr)
            engine.maybe_check()
        engine.check()
        record = EpochResult(epoch + 1, time.perf_counter() - epoch_start, engine.stats.rounds - rounds_before,
                             engine.comm.stats.bytes_sent - bytes_before)
        if test is not None:
            with engine.planned(("eval", test.shape[0])):
                logits = _forward(engine, test, weights)[0]
                record.test_logits = engine.reveal(logits, to=config.evaluator)
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)

    flat = cat([w.reshape(-1) for w in weights])
    engine.verify(flat)  # the kept shares themselves are checked, revealed or not
    final = None
    for receiver in config.reveal_to:
        plain = engine.reveal(flat, to=receiver)
        if rank == receiver:
            final = plain.reshape(-1)
    return TrainResult(weights if len(weights) > 1 else weights[0], final, history, total, positives, mean, std, time.perf_counter() - started,
                       engine.stats.as_dict())


def _forward(engine: Engine, x: AShare, weights: list[AShare]) -> tuple[AShare, list[AShare], list[AShare]]:
    """Logits, the inputs of every layer (ones column included) and the ReLU derivatives."""
    inputs, slopes = [x], []
    activation = x
    for layer in weights[:-1]:
        hidden, slope = engine.relu(engine.matmul(activation, layer))
        slopes.append(slope)
        activation = cat([hidden, _public(engine, np.ones((hidden.shape[0], 1)))], axis=1)
        inputs.append(activation)
    return engine.matmul(activation, weights[-1]), inputs, slopes


def _step(engine: Engine, x: AShare, y: AShare, row_weight: AShare, weights: list[AShare],
          lr: float) -> list[AShare]:
    logits, inputs, slopes = _forward(engine, x, weights)
    residual = sigmoid(engine, logits) - y
    delta = engine.mul(row_weight, residual)
    gradients = []
    for index in range(len(weights) - 1, -1, -1):
        gradients.append(engine.matmul(inputs[index].T, delta))
        if index:
            back = engine.matmul(delta, weights[index][:-1].T)
            (delta,) = engine.mul_many([(back, slopes[index - 1])], truncate=False)
    gradients.reverse()
    scale = int(encode(lr / x.shape[0]))
    steps = engine.trunc_many([engine.mul_int(g, scale) for g in gradients])
    return [w - s for w, s in zip(weights, steps)]


def train_logreg_plain(features: np.ndarray, labels: np.ndarray, initial: np.ndarray | Sequence[np.ndarray],
                       config: MaliciousTrainConfig, sigmoid_fn: Callable[[np.ndarray], np.ndarray] = sigmoid_poly_plain,
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same algorithm in float64 on the pooled rows (for tests and the benchmark):
    returns (all weights flattened layer by layer, bias rows last in each; mean; std)."""
    x = np.asarray(features, np.float64)
    y = np.asarray(labels, np.float64).reshape(-1, 1)
    total = x.shape[0]
    mean = x.mean(0)
    std = np.sqrt(np.clip((x ** 2).mean(0) - mean ** 2, 0, None))
    std[std < 1e-6] = 1.0
    x = np.concatenate([(x - mean) / std, np.ones((total, 1))], axis=1)
    positives = int(y.sum())
    w_neg, w_pos = total / (2.0 * max(total - positives, 1)), total / (2.0 * max(positives, 1))
    weights = [layer.copy() for layer in as_layers(initial)]
    for epoch in range(config.epochs):
        order = epoch_order(total, config.seed, epoch)
        for start in range(0, total, config.batch_size):
            index = order[start:start + config.batch_size]
            xb, yb = x[index], y[index]
            inputs, slopes, activation = [xb], [], xb
            for layer in weights[:-1]:
                z = activation @ layer
                slopes.append((z >= 0).astype(np.float64))
                activation = np.concatenate([np.maximum(z, 0), np.ones((len(index), 1))], axis=1)
                inputs.append(activation)
            delta = (yb * (w_pos - w_neg) + w_neg) * (sigmoid_fn(activation @ weights[-1]) - yb)
            gradients = []
            for layer_index in range(len(weights) - 1, -1, -1):
                gradients.append(inputs[layer_index].T @ delta)
                if layer_index:
                    delta = (delta @ weights[layer_index][:-1].T) * slopes[layer_index - 1]
            gradients.reverse()
            weights = [w - lr_scale(config, len(index)) * g for w, g in zip(weights, gradients)]
    return np.concatenate([w.reshape(-1) for w in weights]), mean, std


def lr_scale(config: MaliciousTrainConfig, batch: int) -> float:
    return config.lr / batch
