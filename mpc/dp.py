"""DP-SGD under MPC: per-example clipping, jointly generated Gaussian noise, an accountant.

Clipping (logistic regression). Row i's loss gradient is ``e_i [x_i, 1]`` with
``e_i = w(y_i) (sigmoid(z_i) - y_i)``, so its norm is ``|e_i| r_i`` with
``r_i = sqrt(1 + |x_i|^2)``, which depends on the row alone. Clipping it to norm C is
therefore clamping ``e_i`` to ``[-C / r_i, C / r_i]``: the bounds ``C / r_i`` are computed
once per run under MPC (an inverse square root by Newton's iteration, :func:`inverse_sqrt`),
and each step adds one batched comparison (:func:`clamp`).

Noise. Party j draws its own ``N(0, s^2 / n)`` from a fresh AES-CTR keystream keyed by a
seed it never sends (:func:`joint_gaussian`) and adds it, in fixed point, to its own share of
the gradient; the n draws are independent, so the secret sum is ``N(0, s^2)`` and the whole
operation costs no communication. No party can reconstruct the noise: party j knows its own
draw ``v_j`` and nothing about the others beyond their distribution (their seeds never leave
their parties, and every value j receives during the run is masked by uniform shares), so
given its whole view the noise still has variance ``(n - 1) s^2 / n`` about j's best guess;
the correlation between j's draw and the noise is ``1 / sqrt(n)``. Parties that pool their
draws cancel their part: against a coalition of t parties the noise left is
``s sqrt((n - t) / n)``, so the privacy budget below holds against outsiders and against
any single party only up to that factor.

Under protocol=malicious a share must carry its MAC, so each party's draw enters as its own
authenticated input instead (one input round per party per parameter tensor and step,
``mpc.shares.private_sum``); no party can alter or learn another's draw. A malicious party
chooses its own draw as it chooses its own rows: it may leave its part out, which leaves
the honest parties' ``s sqrt((n - t) / n)`` (the coalition figure above, now also against
outsiders), or add a value of its choosing, which can spoil the model as a poisoned input
can but teaches it nothing about the other parties' rows.

Batches are Poisson samples (each row with probability ``q = batch_size / rows``) drawn from
a seed every party contributes to, and the update divides by the expected batch size, as
the accountant (Google's ``dp-accounting``, RDP) assumes. Which rows form a batch is public
to the parties, as the row order is in plain training: the subsampling amplification in the
accountant's figure holds against whoever sees the released model without that seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np
import torch

from mpc.shares import private_sum
from protocols.coin import joint_random
from protocols.prg import CipherStream, new_seed

@dataclass
class DpConfig:
    """``train.dp.*``: differentially private SGD; off while ``epsilon`` is null."""

    epsilon: Optional[float] = None
    delta: float = 1e-5
    clip: float = 1.0
    noise_multiplier: Optional[float] = None  # null: calibrated so the planned epochs spend epsilon

    @property
    def enabled(self) -> bool:
        return self.epsilon is not None


def config_problem(config: DpConfig, model_kind: str) -> str | None:
    """What is wrong with ``train.dp`` for this job, or None."""
    if not config.enabled:
        return None
    if config.epsilon <= 0:
        return f"train.dp.epsilon={config.epsilon} must be positive"
    if not 0 < config.delta < 1:
        return f"train.dp.delta={config.delta} must be in (0, 1)"
    if config.clip <= 0:
        return f"train.dp.clip={config.clip} must be positive"
    if config.noise_multiplier is not None and config.noise_multiplier <= 0:
        return f"train.dp.noise_multiplier={config.noise_multiplier} must be positive"
    if model_kind != "logreg":
        return (f"train.dp needs model=logreg (per-example clipping uses the logistic regression's "
                f"closed-form gradient); model={model_kind}")
    return None


# ---- the accountant -------------------------------------------------------------------------

# RDP orders: integers only (each is a closed-form sum; fractional orders need slowly
# converging series), dense where the optimum lies for these budgets
RDP_ORDERS = tuple(range(2, 65)) + (80, 96, 128, 192, 256)


def accountant() -> Any:
    """The accountant every figure here comes from: dp-accounting's RDP, on :data:`RDP_ORDERS`."""
    from dp_accounting import rdp

    return rdp.RdpAccountant(RDP_ORDERS)


def _step_event(sampling_rate: float, noise_multiplier: float) -> Any:
    import dp_accounting

    return dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))


class Ledger:
    """Epsilon after any number of steps of one Poisson-sampled Gaussian mechanism: RDP adds
    up over steps, so the accountant's per-step figures are computed once."""

    def __init__(self, sampling_rate: float, noise_multiplier: float, delta: float) -> None:
        one_step = accountant()
        one_step.compose(_step_event(sampling_rate, noise_multiplier))
        self._per_step = np.asarray(one_step.rdp)
        self.delta = delta

    def epsilon(self, steps: int) -> float:
        from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

        return 0.0 if steps == 0 else float(compute_epsilon(RDP_ORDERS, self._per_step * steps, self.delta)[0])

    def steps_within(self, epsilon: float, planned: int) -> int:
        """The most steps, up to ``planned``, that spend at most ``epsilon``."""
        low, high = 0, planned
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if self.epsilon(middle) <= epsilon else (low, middle - 1)
        return low


def calibrate_noise(epsilon: float, delta: float, sampling_rate: float, steps: int) -> float:
    """The smallest noise multiplier whose ``steps`` steps spend at most ``epsilon``."""
    import dp_accounting

    return float(dp_accounting.calibrate_dp_mechanism(
        accountant, lambda sigma: dp_accounting.SelfComposedDpEvent(_step_event(sampling_rate, sigma), steps),
        epsilon, delta, tol=1e-3))


@dataclass
class PrivacyPlan:
    """The run's DP-SGD schedule: fixed before the first step from public sizes only."""

    epsilon: float
    delta: float
    clip: float
    noise_multiplier: float
    sampling_rate: float
    steps_per_epoch: int
    planned_steps: int
    budget_steps: int  # steps taken before the budget would be exceeded
    ledger: Ledger

    @classmethod
    def for_run(cls, config: DpConfig, rows: int, batch_size: int, epochs: int) -> "PrivacyPlan":
        rate = min(1.0, batch_size / rows)
        per_epoch = math.ceil(rows / batch_size)
        planned = per_epoch * epochs
        sigma = config.noise_multiplier or calibrate_noise(config.epsilon, config.delta, rate, planned)
        ledger = Ledger(rate, sigma, config.delta)
        budget = ledger.steps_within(config.epsilon, planned)
        if budget == 0:
            raise ValueError(f"train.dp.epsilon={config.epsilon}: one step with noise multiplier {sigma:.3g} "
                             f"already spends more; raise the epsilon or the noise multiplier")
        return cls(config.epsilon, config.delta, config.clip, sigma, rate, per_epoch, planned, budget, ledger)


# ---- secure parts ---------------------------------------------------------------------------

def inverse_sqrt_iterations(upper: float) -> int:
    """Newton steps for 1/sqrt(u), u in [1, upper], from the start 1/sqrt(upper): the
    iterate grows by about 1.5 per step until it is near the root, then converges
    quadratically (6 steps reach the ring's resolution)."""
    return math.ceil(math.log(math.sqrt(upper)) / math.log(1.5)) + 6


def inverse_sqrt(values: Any, upper: float) -> Any:
    """1/sqrt(u) under MPC for every u in [1, upper].

    Newton's iteration ``y <- y (3 - u y^2) / 2`` from ``y0 = 1/sqrt(upper)`` (below every
    root) rises monotonically towards the root and never passes it in exact arithmetic, so
    the result approaches 1/sqrt(u) from below. ``u y`` is formed before the second factor
    of y so that no intermediate falls below the ring's resolution.
    """
    y = values * 0 + 1.0 / math.sqrt(upper)  # a public start, without a sharing round
    for _ in range(inverse_sqrt_iterations(upper)):
        y = y * (3 - (values * y) * y) / 2
    return y


def clip_bounds(features: Any, clip: float) -> Any:
    """``clip / sqrt(1 + |x_i|^2)`` per row, rounded down.

    Standardised columns have ``sum_i x_ij^2 = rows``, so ``|x_i|^2 <= columns * rows``:
    that bounds the inverse square root's input range. The inverse square root is within
    about one ring unit of the exact value; the units taken off (that unit times the factor,
    and one for the product's truncation, doubled) keep the bound from rounding above the
    exact one.
    """
    rows, columns = features.size()
    norms = (features * features).sum(1) + 1.0
    margin = 2.0 * (1.0 + clip) * 2.0 ** -16
    return inverse_sqrt(norms, 1.0 + columns * rows).mul(clip).sub(margin).reshape(-1, 1)


def clamp(values: Any, bounds: Any) -> Any:
    """``values`` clamped elementwise to ``[-bounds, bounds]`` with one batched comparison."""
    import crypten

    outside = crypten.stack([bounds - values, values + bounds]).lt(0)  # values > b, values < -b
    pull = outside * crypten.stack([bounds - values, -bounds - values])
    return values + pull[0] + pull[1]


@dataclass
class RowClip:
    """A batch's per-row bounds on ``e_i`` and the update's scale (lr / expected batch size).

    The clamp runs before the scale is applied: bounds of ``clip / r_i`` sit thousands of
    ring units above zero, where those of ``lr / B * clip / r_i`` would sit a few dozen.
    """

    bounds: Any
    scale: float

    def apply(self, errors: Any) -> Any:
        return clamp(errors, self.bounds) * self.scale


def gaussian_share(shape: tuple[int, ...], std: float, stream: CipherStream) -> torch.Tensor:
    """``N(0, std^2)`` values from a cipher keystream (Box-Muller on 53-bit uniforms)."""
    count = int(np.prod(shape)) if shape else 1
    words = stream.read(16 * count).view(np.uint64).reshape(2, count)
    uniform = ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53  # in (0, 1)
    radius = np.sqrt(-2.0 * np.log(uniform[0]))
    return torch.from_numpy(radius * np.cos(2.0 * np.pi * uniform[1]) * std).reshape(shape)


def joint_gaussian(crypten: Any, like: Any, shape: tuple[int, ...], std: float,
                   stream: CipherStream) -> tuple[Any, torch.Tensor]:
    """A secret ``N(0, std^2)`` tensor (of ``like``'s share type) that is the sum of every
    party's own draw.

    Returns the shared noise and this party's draw (which stays with it). Without MACs each
    party's draw becomes its arithmetic share directly, so this needs no communication;
    under protocol=malicious each draw is its party's authenticated input (``mpc.shares.private_sum``).
    """
    world = crypten.communicator.get().get_world_size()
    own = gaussian_share(shape, std / math.sqrt(world), stream)
    return private_sum(crypten, own, like), own


def agree_sampling_seed(comm: Any) -> int:
    """A seed every party contributes to by commit-then-reveal, so none chooses the batches."""
    return int.from_bytes(joint_random(comm, b"DP-SGD sampling seed")[:16], "big")


class PrivateSgd:
    """One run's DP-SGD state at one party: bounds, batches, noise and the privacy spent."""

    def __init__(self, crypten: Any, config: DpConfig, features: Any, lr: float, batch_size: int,
                 epochs: int) -> None:
        self.crypten = crypten
        rows = features.size(0)
        self.plan = PrivacyPlan.for_run(config, rows, batch_size, epochs)
        self.rows = rows
        # the update divides by the expected batch size, whatever the sample's size
        self.update_scale = lr / (self.plan.sampling_rate * rows)
        with crypten.no_grad():
            self.bounds = clip_bounds(features, config.clip)
        self.noise_std = self.update_scale * self.plan.noise_multiplier * config.clip
        self._seed = agree_sampling_seed(crypten.communicator.get())
        self._noise = CipherStream(new_seed())  # this party's own, never sent
        self.steps = 0
        self.epsilon_per_epoch: list[float] = []

    @property
    def exhausted(self) -> bool:
        return self.steps >= self.plan.budget_steps

    def batches(self, epoch: int) -> Iterator[torch.Tensor]:
        """Poisson-sampled row indices for each step of ``epoch``, until the budget is spent."""
        sampler = np.random.default_rng([self._seed, epoch])
        for _ in range(self.plan.steps_per_epoch):
            if self.exhausted:
                return
            self.steps += 1
            yield torch.from_numpy(np.flatnonzero(sampler.random(self.rows) < self.plan.sampling_rate))

    def epoch_steps(self, train: Any, scales: Any, epoch: int) -> Iterator[tuple[Any, Any, Any, Any]]:
        """(features, labels, class weights, clipping) of each sampled batch; all None for an
        empty one (the step is then noise alone)."""
        for rows in self.batches(epoch):
            if len(rows) == 0:
                yield None, None, None, None
            else:
                yield train.features[rows], train.labels[rows], scales[rows], RowClip(self.bounds[rows], self.update_scale)

    def add_noise(self, parameters: Any) -> None:
        """Each parameter's gradient plus jointly generated noise (a fresh gradient if None)."""
        for parameter in parameters:
            noise, _ = joint_gaussian(self.crypten, parameter, tuple(parameter.size()), self.noise_std, self._noise)
            parameter.grad = noise if parameter.grad is None else parameter.grad + noise

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run continues from (a checkpoint, ``mpc.checkpoint``): the steps taken,
        which the accountant's epsilon follows from, the epsilon after each epoch, and the
        sampling seed, so the remaining epochs sample the batches the run would have. The
        noise is drawn afresh (its keys are never saved)."""
        return {"steps": self.steps, "epsilon_per_epoch": list(self.epsilon_per_epoch),
                "sampling_seed": self._seed.to_bytes(16, "big")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.epsilon_per_epoch = [float(v) for v in state["epsilon_per_epoch"]]
        self._seed = int.from_bytes(state["sampling_seed"], "big")

    def end_epoch(self) -> float:
        spent = self.plan.ledger.epsilon(self.steps)
        self.epsilon_per_epoch.append(spent)
        return spent

    def report(self) -> dict:
        plan = self.plan
        return {
            "epsilon_target": plan.epsilon, "delta": plan.delta, "clip": plan.clip,
            "noise_multiplier": plan.noise_multiplier, "sampling_rate": plan.sampling_rate,
            "accountant": "dp-accounting RDP (integer orders 2..256), Poisson-sampled Gaussian",
            "steps_planned": plan.planned_steps, "steps_taken": self.steps,
            "stopped_at_budget": self.steps < plan.planned_steps,
            "epsilon_per_epoch": list(self.epsilon_per_epoch),
            "epsilon_spent": self.epsilon_per_epoch[-1] if self.epsilon_per_epoch else 0.0,
        }
