"""Secure training: forward, the loss's closed-form output gradient, backward and the
optimizer's update, all under MPC (``mpc.losses``, ``mpc.optim``).

The loss itself (a logarithm) is never computed under MPC; CrypTen's autograd carries the
output gradient back through the network. The held-out loss and metrics are computed by the
evaluator from revealed predictions.
"""

from __future__ import annotations

import functools
import itertools
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from mpc import release, share_ops
from mpc.approximations import multiply_precisely
from mpc.dp import DpConfig, PrivateSgd, RowClip
from mpc.models import secure_state
from mpc.optim import secure_optimizer
from mpc.scoring import load_checked_shares
from mpc.shares import mac_key_share, planned, saved_share, verify
from protocols.crypten_hooks import divides_wide_values_exactly
from protocols.prg import generator_positions, seek_generators


@dataclass
class TrainConfig:
    """``train.*``: the optimizer and its schedule, and who receives the trained model."""

    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.5
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam, adamw
    eps: float = 1e-3  # adam, adamw: at least mpc.optim.ADAM_MIN_EPS
    schedule: str = "constant"  # constant, step (lr * lr_gamma every lr_step epochs) or cosine
    lr_step: int = 1
    lr_gamma: float = 0.1
    reveal_to: list[str] = field(default_factory=list)
    checkpoint_every: int = 0  # save this party's shares of the training state every n epochs (0: never)
    resume: str = ""  # a run folder (outputs/<run id>) whose checkpoints this run continues
    plaintext_reference: bool = True
    evaluator: int = 0  # the party that receives held-out predictions and prints metrics
    dp: DpConfig = field(default_factory=DpConfig)  # differentially private SGD (mpc/dp.py)


def epoch_order(rows: int, seed: int, epoch: int) -> torch.Tensor:
    """The public row order of one epoch; secure and plaintext runs use the same one."""
    return torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(rows))


def batch_slices(rows: int, batch_size: int) -> list[slice]:
    return [slice(start, min(start + batch_size, rows)) for start in range(0, rows, batch_size)]


@dataclass
class EpochRecord:
    epoch: int
    seconds: float
    bytes_sent: int
    bytes_received: int
    rounds: int
    metrics: Any = None  # the task's metrics (mpc.metrics)
    heldout_logits: torch.Tensor | None = None  # at the evaluator: the outputs the metrics were computed from
    epsilon: float | None = None  # privacy spent so far, under DP-SGD
    phases: dict[str, dict[str, int]] = field(default_factory=dict)  # PhaseMeter.totals: where the traffic went

    def as_dict(self) -> dict:
        record = {k: v for k, v in self.__dict__.items() if k not in ("metrics", "heldout_logits")}
        record["metrics"] = self.metrics.as_dict() if self.metrics else None
        return record


# The sigmoid: clip to [-CLIP, CLIP], then an odd polynomial of degree 15 in t = x / SCALE,
# fitted (minimax, as Chebyshev series c_1 T_1 + c_3 T_3 + ... + c_15 T_15) on t in
# [-CLIP / SCALE, CLIP / SCALE] so that the largest error over the whole real line, clipped
# tails included, is 4.6e-4 in exact arithmetic; CrypTen's default (exp by 9 squarings, 3 Newton
# steps of the reciprocal) errs by 2.1e-3 on [-12, 12]. It is evaluated as t g(s), s = T_2(t) =
# 2t^2 - 1 and g a Chebyshev series of degree 7 in s, split as A(s) + T_4(s) B(s) with A, B of
# degree 3: six products (two of them squares) where the series in t takes ten; A's and B's sums
# are truncated with T_4's product, in one round. SCALE is a power of two so that s + 1 = clip(x)^2 / 32 is one truncation of
# the product clip(x)^2 (weighted_sigmoid_residual); the fit is as good on the narrower t range.
SIGMOID_CLIP = 7.0
SIGMOID_SCALE = 8
# The largest error as evaluated in the ring, over the whole real line (asserted under MPC on a
# grid out to +-1e4 in tests/test_sigmoid.py; mpc.tolerance builds on it): the fit's 4.6e-4,
# plus t within 1 ulp times the polynomial's slope <= SCALE / 4, plus rounding in the
# products and in A and B.
SIGMOID_MAX_ERROR = 6.0e-4
SIGMOID_DEGREE = 15
# |g| on the s that occur (t in [-CLIP / SCALE, CLIP / SCALE]), g the series over t (sigmoid(x)
# = 1/2 + t g(2t^2 - 1)): at most at t = 0, the fit's slope of sigmoid(SCALE t) there (SCALE / 4 =
# 2); tests/test_sigmoid.py checks it
SIGMOID_FACTOR_BOUND = 2.0
# fit_sigmoid_coefficients() rounded to float32; fitting takes ~0.3 s, so it is not redone per run
SIGMOID_COEFFICIENTS = (5.104681849e-01, -2.672668397e-01, -1.114310138e-02, -9.338598698e-02,
                        -2.588224597e-02, -3.037193231e-02, -8.069080301e-03, -5.564535968e-03)
# A's and B's coefficients are applied as integers times 2^SIGMOID_WEIGHT_BITS (the smallest,
# 1.0e-2, would keep under 10 bits at 2^-16), then divided once
SIGMOID_WEIGHT_BITS = 20


def sigmoid_coefficients() -> torch.Tensor:
    return torch.tensor(SIGMOID_COEFFICIENTS, dtype=torch.float32)


def sigmoid_split_coefficients() -> tuple[np.ndarray, np.ndarray]:
    """The same polynomial as t (A(s) + T_4(s) B(s)), s = 2t^2 - 1: the coefficients of T_0..T_3
    (in s) of A and of B. With g = sum_j d_j T_j(s) (the unique degree-7 g with t g(s) equal to
    the series), T_4+j = 2 T_4 T_j - T_4-j gives A_j = d_j - d_8-j, B_0 = d_4, B_j = 2 d_4+j."""
    t = np.cos(np.linspace(0.0, np.pi, 257))
    series = np.polynomial.chebyshev.chebval(t, np.insert(np.array(SIGMOID_COEFFICIENTS), np.arange(8), 0.0))
    s = 2 * t * t - 1
    basis = np.stack([t * np.polynomial.chebyshev.chebval(s, [0] * j + [1]) for j in range(8)], axis=1)
    d = np.linalg.lstsq(basis, series, rcond=None)[0]
    return (np.array([d[0], d[1] - d[7], d[2] - d[6], d[3] - d[5]]),
            np.array([d[4], 2 * d[5], 2 * d[6], 2 * d[7]]))


def fit_sigmoid_coefficients() -> np.ndarray:
    """Odd Chebyshev coefficients c_1, c_3, ..., c_15 of sigmoid(SCALE t) - 1/2 on
    [-CLIP / SCALE, CLIP / SCALE].

    Lawson's iteration towards the minimax fit. At the ends the series stands for every
    |x| >= CLIP, so it aims at the middle of [sigmoid(CLIP), 1] there.
    """
    end = SIGMOID_CLIP / SIGMOID_SCALE
    t = end * np.cos(np.linspace(0.0, np.pi, 6001))
    target = 1.0 / (1.0 + np.exp(-SIGMOID_SCALE * t)) - 0.5
    tail = 1.0 / (1.0 + np.exp(SIGMOID_CLIP))
    ends = np.abs(np.abs(t) - end) < 1e-12
    target[ends] = np.sign(t[ends]) * (0.5 - tail / 2)
    offset = np.where(ends, tail / 2, 0.0)
    basis = np.stack([np.polynomial.chebyshev.chebval(t, [0] * k + [1])
                      for k in range(1, SIGMOID_DEGREE + 1, 2)], axis=1)
    weights = np.ones_like(t)
    for _ in range(300):
        root = np.sqrt(weights)
        coefficients = np.linalg.lstsq(basis * root[:, None], target * root, rcond=None)[0]
        weights = weights * (np.abs(basis @ coefficients - target) + offset)
        weights /= weights.sum()
    return coefficients


@functools.lru_cache(maxsize=1)
def _sigmoid_weights() -> tuple[tuple[tuple[int, ...], ...], np.ndarray]:
    """A's and B's coefficients of T_1..T_3 as integers times 2^SIGMOID_WEIGHT_BITS (rows A, B),
    and their constant terms (read-only). Worked out once: the fit behind them is a least-squares
    solve, ~1 ms a step where the sigmoid runs."""
    a, b = sigmoid_split_coefficients()
    weights = np.round(np.stack([a[1:], b[1:]]) * 2**SIGMOID_WEIGHT_BITS).astype(np.int64)
    constants = np.array([a[0], b[0]])
    constants.setflags(write=False)
    return tuple(tuple(int(w) for w in row) for row in weights), constants


def _clipped(logits: Any) -> Any:
    """clip(x, -CLIP, CLIP) = x - relu(x - CLIP) + relu(-CLIP - x), exact, by one ReLU of both
    (with ReLU masks its product with the indicator is local: the comparison's rounds only)."""
    import crypten

    clip = SIGMOID_CLIP
    outside = crypten.stack([logits - clip, -clip - logits]).relu()
    return logits - outside[0] + outside[1]


def _odd_factor(s: Any) -> Any:
    """g(s), s = 2 t^2 - 1: the series divided by t, so that sigmoid(x) = 1/2 + t g."""
    import crypten

    s2 = s.square() * 2 - 1
    # s s2 and s2^2 left untruncated (the right factors read as integer sharings of their
    # encodings): A's and B's sums and s2^2 are then truncated together, one round. The sums
    # then reach 2^52: where the division is not exact that wide (CrypTen's own truncation,
    # at any number of parties), the products are truncated first, a round more, and the sums stay at 2^36.
    right = crypten.stack([s2, s2])
    right.encoder = crypten.encoder.FixedPointEncoder(precision_bits=0)
    level = crypten.stack([s, s2]) * right  # at twice the fractional bits
    one = s.encoder.scale  # 1 at twice the fractional bits, read at the usual
    if not divides_wide_values_exactly(crypten):
        level, one = level.div(one), 1
    s3 = level[0] * 2 - s * one
    weights, constants = _sigmoid_weights()
    # shares times Python integers are exact (no truncation), under every share type
    sums = [s * (row[0] * one) + s2 * (row[1] * one) + s3 * row[2] for row in weights]
    parts = crypten.stack([*sums, level[1] * 2**SIGMOID_WEIGHT_BITS]).div(one * 2**SIGMOID_WEIGHT_BITS)
    s4 = parts[2] * 2 - 1
    return parts[0] + constants[0] + s4 * (parts[1] + constants[1])


def secure_sigmoid(logits: Any) -> Any:
    """sigmoid(x) under MPC, within SIGMOID_MAX_ERROR (6.0e-4) of the true value for every x."""
    t = _clipped(logits).div(SIGMOID_SCALE)
    return t * _odd_factor(t.square() * 2 - 1) + 0.5


def weighted_sigmoid_residual(logits: Any, weights: Any, targets: Any, on_shares: bool = True) -> Any:
    """w (sigmoid(x) - y) for sharings w and y of the logits' shape, as w t g + w (1/2 - y).

    With c = clip(x): c^2, w c and w (1/2 - y) are multiplied in one round and left
    untruncated (the right factors read as integer sharings of their encodings), then truncated
    together in one, by 2^21 after the exact factors 1, 4, 32: s + 1 = c^2 / 32, w t = w c / 8
    and w (1/2 - y). So neither t nor the residual's product with w costs rounds of its own
    (three fewer than w (secure_sigmoid(x) - y) would take). Its error: w times the sigmoid's, plus the
    truncation of w t (one ulp) times |g| <= SIGMOID_FACTOR_BOUND and one ulp each from the
    truncations of w (1/2 - y) and of the last product (mpc.tolerance: RESIDUAL_ULPS).

    The untruncated products reach 2^43 (w <= 50): where the division is not exact that wide
    (CrypTen's own truncation, wrong with probability |x| / 2^64), it is
    w (sigmoid(x) - y) instead, three rounds more, its product at 2^38 as CrypTen's own.

    Plain sharings are computed on their raw shares (:mod:`mpc.share_ops`: the same protocol
    calls in the same order, without CrypTen's per-operation object layers; ``on_shares``
    False keeps the MPCTensor path, the reference it is tested against)."""
    import crypten

    if not divides_wide_values_exactly(crypten):
        return weights * (secure_sigmoid(logits) - targets)
    if on_shares and share_ops.applies(crypten, logits, weights, targets):
        return _residual_on_shares(share_ops.ShareOps(crypten, logits), logits, weights, targets)
    scale_bits = SIGMOID_SCALE.bit_length() - 1
    c = _clipped(logits)
    right = crypten.stack([c, c, 0.5 - targets])
    right.encoder = crypten.encoder.FixedPointEncoder(precision_bits=0)  # its shares as integers: no truncation
    raw = crypten.stack([c, weights, weights]) * right  # each at twice the fractional bits
    fractional = c.encoder.scale.bit_length() - 1
    shift = fractional + 2 * scale_bits - 1  # c^2 / (2 SCALE^2) = s + 1
    parts = crypten.stack([raw[0], raw[1] * 2 ** (shift - fractional - scale_bits), raw[2] * 2 ** (shift - fractional)])
    parts = parts.div(2**shift)
    return parts[1] * _odd_factor(parts[0] - 1) + parts[2]


def _residual_on_shares(ops: share_ops.ShareOps, logits: Any, weights: Any, targets: Any) -> Any:
    """weighted_sigmoid_residual on the raw shares: the same operations in the same order on
    the same tuples, without CrypTen's object layers per operation (tests/test_sigmoid.py
    checks both against plaintext, and that their rounds and bytes are equal)."""
    scale_bits = SIGMOID_SCALE.bit_length() - 1
    x, w, y = ops.share(logits), ops.share(weights), ops.share(targets)
    shift = ops.bits + 2 * scale_bits - 1
    ops.expect(_residual_operations(tuple(x.size()), ops.scale, 2**shift))
    outside = ops.relu(torch.stack([ops.plus(x, -SIGMOID_CLIP), ops.plus(-x, -SIGMOID_CLIP)]))
    c = x - outside[0] + outside[1]
    raw = ops.product(torch.stack([c, w, w]), torch.stack([c, c, ops.plus(-y, 0.5)]), y_scaled=False)
    fractional = ops.bits
    parts = ops.divide(torch.stack([raw[0], raw[1] * 2 ** (shift - fractional - scale_bits),
                                    raw[2] * 2 ** (shift - fractional)]), 2**shift)
    g = _odd_factor_on_shares(ops, ops.plus(parts[0], -1))
    return ops.tensor(ops.product(parts[1], g) + parts[2])


def _residual_operations(size: tuple[int, ...], scale: int, divisor: int) -> list[tuple]:
    """The products, divisions and ReLUs of :func:`_residual_on_shares` on logits of ``size``,
    in its order (its first divisor ``divisor``), announced before it starts: the first step
    asks the dealer for their tuples in one request, not nine (tests/protocols/
    test_dealer_requests.py checks the list against the tuples the function asks for)."""
    two, three = (2, *size), (3, *size)
    return [("relu", two), ("mul", three), ("divide", three, divisor),  # clip, then c^2, w c, w (1/2 - y)
            ("square", size), ("divide", size, scale), ("mul", two),  # _odd_factor_on_shares: s^2, then s s2, s2^2
            ("divide", three, scale * 2**SIGMOID_WEIGHT_BITS), ("mul", size), ("divide", size, scale),
            ("mul", size), ("divide", size, scale)]  # w t g


def _odd_factor_on_shares(ops: share_ops.ShareOps, s: torch.Tensor) -> torch.Tensor:
    """_odd_factor on the raw shares (the division exact for wide values: its one-round form)."""
    s2 = ops.plus(ops.square(s) * 2, -1)
    level = ops.product(torch.stack([s, s2]), torch.stack([s2, s2]), y_scaled=False)
    one = ops.scale
    s3 = level[0] * 2 - s * one
    weights, constants = _sigmoid_weights()
    sums = [s * (row[0] * one) + s2 * (row[1] * one) + s3 * row[2] for row in weights]
    parts = ops.divide(torch.stack([*sums, level[1] * 2**SIGMOID_WEIGHT_BITS]), one * 2**SIGMOID_WEIGHT_BITS)
    s4 = ops.plus(parts[2] * 2, -1)
    return ops.plus(parts[0], constants[0]) + ops.product(s4, ops.plus(parts[1], constants[1]))


class PhaseMeter:
    """Bytes (sent + received) and rounds per phase of training, from the party's counters:
    where each row's traffic goes (forward, loss gradient, backward, update, evaluation)."""

    def __init__(self, stats: Any) -> None:
        self.stats = stats
        self.totals: dict[str, dict[str, int]] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.stats is None:  # a session without a counting transport: nothing to meter
            yield
            return
        before = (self.stats.bytes_sent + self.stats.bytes_received, self.stats.rounds)
        try:
            yield
        finally:
            entry = self.totals.setdefault(name, {"bytes": 0, "rounds": 0})
            entry["bytes"] += self.stats.bytes_sent + self.stats.bytes_received - before[0]
            entry["rounds"] += self.stats.rounds - before[1]

    def take(self) -> dict[str, dict[str, int]]:
        """The totals since the last take."""
        totals, self.totals = self.totals, {}
        return totals


_TRAINERS = itertools.count()  # names each trainer's planned blocks: two models' steps never share a plan


class SecureTrainer:
    """Trains one CrypTen model on a secret-shared dataset; every party runs the same loop."""

    def __init__(self, crypten: Any, model: Any, config: TrainConfig, loss: Any, seed: int, stats: Any,
                 show_progress: bool) -> None:
        self.crypten = crypten
        self.model = model
        self.config = config
        self.loss = loss
        self.optimizer = secure_optimizer(crypten, list(model.parameters()), config)
        self.seed = seed
        self.stats = stats
        self.meter = PhaseMeter(stats)
        self.show_progress = show_progress
        self.rank = crypten.communicator.get().get_rank()
        self.private: PrivateSgd | None = None  # DP-SGD's state, set up by fit when train.dp is on
        self.heldout_logits: torch.Tensor | None = None  # the last revealed held-out outputs (evaluator)
        self.heldout_labels: torch.Tensor | None = None
        self._plans = next(_TRAINERS)

    def planned(self, kind: str, like: Any, rows: int) -> Any:
        """A block of this trainer's (``kind``: a training "step" or a "predict") on ``rows``
        rows of secrets of ``like``'s type: its preprocessing is planned per trainer, kind and
        batch size, so another model trained in the same session gets its own plan
        (:func:`mpc.shares.planned`)."""
        return planned(like, (kind, self._plans, rows))

    def step(self, features: Any, targets: Any, scales: Any, epoch: int = 0, clip: RowClip | None = None) -> None:
        """One step; ``scales`` are this batch's :meth:`Loss.row_scales`. The summed gradient
        is then scaled by the optimizer's factor for ``epoch`` over the batch size. Under DP-SGD
        (binary logistic regression, plain SGD) ``clip`` clips each row's gradient and scales it
        to an update instead, and features None is an empty sample (noise only)."""
        crypten = self.crypten
        meter = self.meter
        self.model.zero_grad()
        if features is not None:
            with meter.phase("forward"):
                outputs = self.model(features)
            with crypten.no_grad(), meter.phase("loss_gradient"):
                gradient = self.loss.output_gradient(crypten, outputs, targets, scales)
                if clip is not None:
                    gradient = clip.apply(gradient)
            with meter.phase("backward"):
                outputs.backward(gradient)
            if clip is None:
                with crypten.no_grad(), meter.phase("update"):
                    self._scale_gradients(self.optimizer.gradient_factor(epoch) / features.size(0))
        if self.private is not None:
            with crypten.no_grad(), meter.phase("dp_noise"):
                self.private.add_noise(self.model.parameters())
        # the update as torch.optim's (CrypTen's update_parameters also zeroes gradients above
        # 100, a guard against the wrap errors of its local truncation, at a comparison per
        # parameter tensor per step)
        with crypten.no_grad(), meter.phase("update"):
            self.optimizer.step(epoch)

    def _scale_gradients(self, factor: float) -> None:
        """Every parameter's gradient times ``factor``, all in one truncation."""
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        flat = multiply_precisely(self.crypten.cat([p.grad.flatten() for p in parameters]), factor)
        offset = 0
        for parameter in parameters:
            size = parameter.grad.numel()
            parameter.grad = flat[offset:offset + size].reshape(parameter.grad.size())
            offset += size

    def predict_for(self, features: Any, dst: int) -> torch.Tensor | None:
        """Outputs revealed to party ``dst`` only."""
        with self.crypten.no_grad(), self.planned("predict", features, features.size(0)):
            self.model.train(False)  # inference mode: no autograd bookkeeping
            outputs = self.model(features)
            self.model.train()
            return release.open(outputs, "heldout_predictions", to=dst)

    def _epoch_steps(self, train: Any, targets: Any, row_scales: Any, epoch: int) -> Iterator[tuple]:
        order = epoch_order(train.rows, self.seed, epoch)
        features, batch_targets = train.features[order], targets[order]
        scales = row_scales if isinstance(row_scales, float) else row_scales[order]
        for rows in batch_slices(train.rows, self.config.batch_size):
            yield features[rows], batch_targets[rows], scales if isinstance(scales, float) else scales[rows], epoch

    def state_dict(self, epochs_done: int) -> dict[str, Any]:
        """This party's part of the training state after ``epochs_done`` epochs: its shares of
        the weights and the optimizer state (with their MACs, and its share of the MAC key,
        under protocol=malicious), and its PRG streams' positions."""
        parameters = secure_state(self.model)
        state = {"epoch": epochs_done,
                 "parameters": {name: saved_share(p) for name, p in parameters.items()},
                 "optimizer": self.optimizer.state_dict(),
                 "generators": generator_positions(self.crypten)}
        key = mac_key_share(next(iter(parameters.values())))
        if key is not None:
            state["mac_key"] = key
        if self.private is not None:
            state["dp"] = self.private.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> int:
        """Continue from :meth:`state_dict`'s output; returns the epochs done. Under
        protocol=malicious the run must hold the saved share of the same MAC key, and the
        shares read back pass a MAC check before any is used."""
        suspect = "the shares read back from the checkpoints (train.resume) were altered"
        load_checked_shares(self.crypten, self.model, state["parameters"], state.get("mac_key"), "train.resume",
                            suspect)
        self.optimizer.load_state_dict(self.crypten, state["optimizer"])
        verify(self.optimizer.state(), suspect=suspect)
        seek_generators(self.crypten, state["generators"])
        if self.private is not None:  # the settings compared on resume include train.dp
            self.private.load_state_dict(state["dp"])
        return int(state["epoch"])

    def fit(self, train: Any, test: Any | None, on_epoch: Callable[[EpochRecord], None] | None = None,
            resume: dict[str, Any] | None = None) -> list[EpochRecord]:
        """Train for the remaining epochs; ``resume`` is a :meth:`state_dict` to continue from.
        ``on_epoch`` runs after each epoch's held-out evaluation (where checkpoints are taken)."""
        self.model.train()
        evaluator = self.config.evaluator
        test_labels = release.open(test.labels, "heldout_labels", to=evaluator) if test is not None else None
        self.heldout_labels = test_labels
        history: list[EpochRecord] = []
        slices = batch_slices(train.rows, self.config.batch_size)
        targets = self.loss.targets(self.crypten, train.labels)
        row_scales = self.loss.row_scales(train.labels)
        if self.config.dp.enabled:
            self.private = PrivateSgd(self.crypten, self.config.dp, train.features, self.config.lr,
                                      self.config.batch_size, self.config.epochs)
        # everything above draws the same randomness in a resumed run as in the run it continues
        first = self.load_state_dict(resume) if resume is not None else 0
        for epoch in range(first, self.config.epochs):
            start = time.perf_counter()
            before = (self.stats.bytes_sent, self.stats.bytes_received, self.stats.rounds)
            self.meter.take()
            if self.private is not None:
                steps = ((x, y, w, epoch, clip) for x, y, w, clip in self.private.epoch_steps(train, row_scales, epoch))
            else:
                steps = self._epoch_steps(train, targets, row_scales, epoch)
            progress = tqdm(steps, total=len(slices), desc=f"epoch {epoch + 1}/{self.config.epochs}", unit="batch",
                            disable=not self.show_progress, leave=True, dynamic_ncols=True)
            for batch in progress:
                with self.planned("step", train.features, batch[0].size(0) if batch[0] is not None else 0):
                    self.step(*batch)
            record = EpochRecord(
                epoch=epoch + 1,
                seconds=time.perf_counter() - start,
                bytes_sent=self.stats.bytes_sent - before[0],
                bytes_received=self.stats.bytes_received - before[1],
                rounds=self.stats.rounds - before[2],
                epsilon=self.private.end_epoch() if self.private is not None else None,
            )
            if test is not None:
                with self.meter.phase("evaluation"):
                    outputs = self.predict_for(test.features, evaluator)
                if outputs is not None:
                    self.heldout_logits = outputs
                    record.metrics = self.loss.evaluate(outputs, test_labels)
                    record.heldout_logits = outputs
                    progress.set_postfix(heldout_loss=f"{record.metrics.loss:.4f}")
            progress.close()
            record.phases = self.meter.take()
            history.append(record)
            if on_epoch is not None:
                on_epoch(record)
            if self.private is not None and self.private.exhausted:
                break  # the privacy budget is spent
        return history
