"""DP-SGD: the accountant, the clipping under MPC against plaintext, the joint noise.

Tolerances. One ring unit is u = 2^-16; the secure sigmoid errs by at most 5.2e-4
(mpc.training); a clipped row's gradient is ``e_i [x_i, 1]`` with ``|e_i|`` at most its bound,
so the sigmoid's error moves an update coordinate j by at most
``lr/B * w_max * 5.2e-4 * sum_i |x_ij|`` and the fixed-point arithmetic by a few u per term.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mpc.dp import RDP_ORDERS, DpConfig, PrivacyPlan, RowClip, inverse_sqrt, inverse_sqrt_iterations
from sessions import run_parties

U = 2.0**-16
SIGMOID_ERROR = 5.2e-4
PARTIES = 3
NOISE_DRAWS = 40_000
NOISE_STD = 0.5


def test_epsilon_is_the_accountants():
    import dp_accounting
    from dp_accounting import rdp

    plan = PrivacyPlan.for_run(DpConfig(epsilon=3.0, delta=1e-5, clip=1.0), rows=6000, batch_size=128, epochs=5)
    assert plan.sampling_rate == 128 / 6000 and plan.planned_steps == 5 * 47
    for steps in (1, 47, 100, plan.planned_steps):
        accountant = rdp.RdpAccountant(RDP_ORDERS)
        accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
            plan.sampling_rate, dp_accounting.GaussianDpEvent(plan.noise_multiplier)), steps))
        assert plan.ledger.epsilon(steps) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-12)
    # calibrated: the planned steps spend the budget, and not more
    assert 2.97 <= plan.ledger.epsilon(plan.planned_steps) <= 3.0
    assert plan.budget_steps == plan.planned_steps


def test_training_stops_at_the_budget():
    plan = PrivacyPlan.for_run(DpConfig(epsilon=2.0, noise_multiplier=1.0), rows=6000, batch_size=128, epochs=5)
    assert 0 < plan.budget_steps < plan.planned_steps
    assert plan.ledger.epsilon(plan.budget_steps) <= 2.0 < plan.ledger.epsilon(plan.budget_steps + 1)
    with pytest.raises(ValueError, match="train.dp.epsilon=0.01"):
        PrivacyPlan.for_run(DpConfig(epsilon=0.01, noise_multiplier=0.3), rows=6000, batch_size=128, epochs=5)


def _features(rows: int, columns: int) -> torch.Tensor:
    """Standardised heavy-tailed columns (a few rows far out), as the trainer receives them."""
    generator = np.random.default_rng(3)
    raw = generator.standard_t(2.5, size=(rows, columns)) * generator.uniform(1e-3, 1e4, size=columns)
    raw[:, 0] += 1.7e9  # a timestamp-like offset
    scaled = (raw - raw.mean(0)) / raw.std(0)
    return torch.from_numpy(scaled)


def _plain_clipped_update(x, y, w, b, weights, clip, lr, batch):
    z = x @ w + b
    e = (weights[1] * y + weights[0] * (1 - y)) * (torch.sigmoid(z) - y)
    rows = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1) * e[:, None]
    factor = (clip / rows.norm(dim=1)).clamp(max=1.0)
    return (rows * factor[:, None]).sum(0) * lr / batch, factor


def _secure_session(crypten, rank):
    """Everything that needs MPC, in one session of three parties."""
    from mpc.dp import clip_bounds, joint_gaussian
    from mpc.metrics import ClassWeights
    from mpc.losses import WeightedBinaryCrossEntropy
    from mpc.models import DEFAULT_MODEL, build_torch_model, encrypt_model
    from mpc.training import SecureTrainer, TrainConfig
    from protocols.prg import CipherStream, new_seed

    results = {}
    # the inverse square root over its whole input range [1, 1 + columns * rows]
    upper = 1 + 8 * 256
    grid = torch.logspace(0, math.log10(upper), 300, dtype=torch.float64)
    results["inverse_sqrt"] = inverse_sqrt(crypten.cryptensor(grid.float(), src=0), upper).get_plain_text().double()
    # one clipped step of the real trainer (no noise) against per-example clipping in float
    x = _features(256, 8)
    y = (torch.arange(256) % 3 == 0).double()
    weights = ClassWeights.balanced(256, int(y.sum()))
    model = build_torch_model(DEFAULT_MODEL, 8, seed=1)
    lr, clip = 0.5, 0.5
    secure_model = encrypt_model(crypten, model, 8)
    loss = WeightedBinaryCrossEntropy(weights)
    trainer = SecureTrainer(crypten, secure_model, TrainConfig(lr=lr, batch_size=256), loss, 0, None, False)
    features = crypten.cryptensor(x.float(), src=0)
    labels = crypten.cryptensor(y.float().reshape(-1, 1), src=0)
    bounds = clip_bounds(features, clip)
    results["bounds"] = bounds.get_plain_text().double().reshape(-1)
    before = [p.get_plain_text().double().reshape(-1) for p in secure_model.parameters()]
    trainer.step(features, labels, loss.row_scales(labels), clip=RowClip(bounds, lr / 256))
    after = [p.get_plain_text().double().reshape(-1) for p in secure_model.parameters()]
    results["update"] = torch.cat([b - a for a, b in zip(after, before)])
    results["start"] = torch.cat(before)
    results["weights"] = (weights.negative, weights.positive)
    # the joint noise: the opened sum and this party's own draw
    noise, own = joint_gaussian(crypten, features, (NOISE_DRAWS,), NOISE_STD, CipherStream(new_seed()))
    results["noise"] = noise.get_plain_text().double()
    results["own"] = own
    # tensors do not survive the trip through a multiprocessing queue once the party exits
    return {key: value.tolist() if torch.is_tensor(value) else value for key, value in results.items()}


@pytest.fixture(scope="module")
def session():
    parties = run_parties(_secure_session, world=PARTIES, timeout_s=600)
    return [{key: torch.tensor(value, dtype=torch.float64) if isinstance(value, list) else value
             for key, value in party.items()} for party in parties]


def test_inverse_sqrt_over_its_input_range(session):
    upper = 1 + 8 * 256
    grid = torch.logspace(0, math.log10(upper), 300, dtype=torch.float64)
    exact = grid.rsqrt()
    error = session[0]["inverse_sqrt"] - exact
    # Newton's iteration converges to within the ring's resolution everywhere: a unit or two
    assert error.abs().max() <= 2 * U, error.abs().max()
    assert inverse_sqrt_iterations(upper) <= 25


def test_clipping_under_mpc_matches_plaintext(session):
    result = session[0]
    x = _features(256, 8)
    y = (torch.arange(256) % 3 == 0).double()
    lr, clip, batch = 0.5, 0.5, 256
    exact_bounds = clip / torch.sqrt(1 + (x * x).sum(1))
    # the bounds never exceed the exact ones, and fall short by the margin (2 (1 + clip) units)
    # plus the inverse square root's unit or two at most
    assert (result["bounds"] <= exact_bounds).all()
    assert (exact_bounds - result["bounds"]).max() <= (2 * (1 + clip) + 2 * clip + 1) * U
    start = result["start"]
    update, factor = _plain_clipped_update(x, y, start[:8], start[8], result["weights"], clip, lr, batch)
    assert 50 < (factor < 1).sum() < batch  # clipping bites on many rows, not on all
    w_max = max(result["weights"])
    column_sums = torch.cat([x.abs().sum(0), torch.tensor([float(batch)], dtype=torch.float64)])
    # per row: the sigmoid's error (or the bound's few units) scaled to an update, plus the
    # scaling's truncation (a unit), times |x_ij|; summed over the rows; then a few units
    tolerance = (lr / batch * (w_max * SIGMOID_ERROR + 8 * U) + U) * column_sums + 4 * U
    assert ((result["update"] - update).abs() <= tolerance).all(), (result["update"] - update, tolerance)
    unclipped, _ = _plain_clipped_update(x, y, start[:8], start[8], result["weights"], 1e9, lr, batch)
    assert ((unclipped - update).abs() > 10 * tolerance).any()


def test_noise_moments_within_sampling_error(session):
    noise = session[0]["noise"]
    assert all(torch.equal(party["noise"], noise) for party in session)
    n = len(noise)
    # mean ~ N(0, s^2/n); sample variance ~ s^2 (1 +- sqrt(2/n)); 4 standard errors each
    assert abs(noise.mean().item()) <= 4 * NOISE_STD / math.sqrt(n)
    assert abs(noise.var().item() / NOISE_STD**2 - 1) <= 4 * math.sqrt(2 / n)
    fourth = ((noise / NOISE_STD) ** 4).mean().item()  # a Gaussian's kurtosis is 3
    assert abs(fourth - 3) <= 4 * math.sqrt(96 / n)


def test_no_party_knows_the_noise(session):
    noise = session[0]["noise"]
    n = len(noise)
    draws = [party["own"] for party in session]
    # the shares add up to the noise (to fixed-point rounding) ...
    assert (sum(draws) - noise).abs().max() <= PARTIES * U
    for draw in draws:
        # ... each explains only 1/parties of its variance: correlation 1/sqrt(parties)
        correlation = np.corrcoef(draw.numpy(), noise.numpy())[0, 1]
        assert abs(correlation - 1 / math.sqrt(PARTIES)) <= 4 / math.sqrt(n)
        # and the best guess from one's own draw leaves (parties - 1)/parties of the variance
        residual = (noise - draw).var().item() / noise.var().item()
        assert abs(residual - (PARTIES - 1) / PARTIES) <= 4 * math.sqrt(2 / n)
    for i in range(PARTIES):
        for j in range(i + 1, PARTIES):
            assert abs(np.corrcoef(draws[i].numpy(), draws[j].numpy())[0, 1]) <= 4 / math.sqrt(n)
