"""Logistic regression under protocol=malicious: honest runs match plaintext; a cheat
anywhere in training stops every party with nothing revealed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import run_ok, spawn  # noqa: E402
from train_programs import make_data, train_party  # noqa: E402

from adversary import Adversary  # noqa: E402
from protocols.malicious.train import (SIGMOID_MAX_ERROR, MaliciousTrainConfig, UnsupportedModel,  # noqa: E402
                                       check_model, sigmoid_poly_plain, train_logreg_plain)

PARTIES, ROWS, WIDTH, EPOCHS, BATCH = 3, 100, 4, 2, 32
ULP = 2.0 ** -16


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    positives = labels == 1
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.fixture(scope="module")
def honest():
    return run_ok(train_party, parties=PARTIES, rows=ROWS, width=WIDTH, epochs=EPOCHS, batch=BATCH,
                  test_rows=50, timeout_s=300)


def test_honest_run_matches_plaintext(honest):
    xs, ys, initial = make_data(PARTIES, ROWS, WIDTH)
    x, y = np.concatenate(xs), np.concatenate(ys)
    config = MaliciousTrainConfig(epochs=EPOCHS, batch_size=BATCH)
    same_poly, mean, std = train_logreg_plain(x, y, initial, config)
    exact, _, _ = train_logreg_plain(x, y, initial, config, lambda z: 1 / (1 + np.exp(-z)))
    weights = [np.array(r["weights"]) for r in honest]
    for other in weights[1:]:
        assert np.array_equal(other, weights[0])  # every receiver got the same model
    secure = weights[0]

    # Fixed point: every value carries 16 fractional bits; per step the update's error is at
    # most lr * max|x| * max w(y) * (a few ulps from rounding x, W, and the 6 truncations on
    # the way to the gradient); we allow 8 ulps per step, summed over all steps.
    x_std = np.abs((x - mean) / std).max() + 1
    positives = y.sum()
    w_max = max(len(y) / (2 * positives), len(y) / (2 * (len(y) - positives)))
    steps = EPOCHS * -(-len(y) // BATCH)
    fixed_point_tol = steps * config.lr * x_std * w_max * 8 * ULP
    assert np.abs(secure - same_poly).max() <= fixed_point_tol, (secure, same_poly, fixed_point_tol)

    # Against the exact sigmoid the polynomial's error (SIGMOID_MAX_ERROR on [-12, 12]) enters
    # every gradient: the same bound with that error in place of the ulps, plus the above.
    z_max = np.abs(np.concatenate([(x - mean) / std, np.ones((len(y), 1))], 1) @ exact).max()
    assert z_max < 12  # the polynomial's fitted range
    poly_tol = steps * config.lr * x_std * w_max * SIGMOID_MAX_ERROR + fixed_point_tol
    assert np.abs(secure - exact).max() <= poly_tol
    # and the models rank the training rows about equally well
    design = np.concatenate([(x - mean) / std, np.ones((len(y), 1))], 1)
    assert abs(_auc(design @ secure, y) - _auc(design @ exact, y)) < 0.02


def test_heldout_logits_reach_the_evaluator_only(honest):
    assert honest[0]["test_logits"] is not None and len(honest[0]["test_logits"]) == 50
    assert honest[1]["test_logits"] is None and honest[2]["test_logits"] is None


def test_semi_honest_mode_matches_too():
    values = run_ok(train_party, parties=2, rows=60, width=3, epochs=1, batch=32, authenticated=False, timeout_s=300)
    xs, ys, initial = make_data(2, 60, 3)
    plain, _, _ = train_logreg_plain(np.concatenate(xs), np.concatenate(ys), initial,
                                     MaliciousTrainConfig(epochs=1, batch_size=32))
    assert np.abs(np.array(values[0]["weights"]) - plain).max() < 4 * 8 * 0.5 * 5 * 3 * ULP


@pytest.mark.parametrize("target,at,cheater", [("matmul", 7, 1), ("tuple:trunc", 23, 0), ("mul", 30, 2)])
def test_cheat_during_training_stops_every_party(target, at, cheater):
    adversary = Adversary(target, at=at, seed=at)
    collected, codes = spawn(train_party, parties=PARTIES, rows=ROWS, width=WIDTH, epochs=EPOCHS, batch=BATCH,
                             adversary=adversary, cheater=cheater, timeout_s=300)
    for rank in range(PARTIES):
        status, value = collected[rank]
        assert status == "error", f"party {rank} finished: {value}"
        assert "CheatDetected" in value and "malicious-security check" in value, value
        assert "no value depending on it was revealed" in value
        assert codes[rank] != 0
    assert collected[PARTIES][0] == "ok"  # the dealer was told to stop


def test_polynomial_error_is_as_documented():
    z = np.linspace(-12, 12, 10001)
    error = np.abs(sigmoid_poly_plain(z) - 1 / (1 + np.exp(-z))).max()
    assert error == pytest.approx(SIGMOID_MAX_ERROR, rel=1e-3) and error < 0.11


def test_unknown_models_are_refused_clearly():
    check_model("logreg")
    check_model("mlp")
    with pytest.raises(UnsupportedModel, match="model=cnn is not available under protocol=malicious"):
        check_model("cnn")


HIDDEN = (5, 3)


def test_mlp_honest_run_matches_plaintext():
    from train_programs import mlp_layers

    values = run_ok(train_party, parties=2, rows=48, width=4, epochs=1, batch=32, hidden=HIDDEN, timeout_s=300)
    xs, ys, _ = make_data(2, 48, 4)
    plain, _, _ = train_logreg_plain(np.concatenate(xs), np.concatenate(ys), mlp_layers(4, HIDDEN),
                                     MaliciousTrainConfig(epochs=1, batch_size=32))
    secure = np.array(values[0]["weights"])
    assert secure.shape == plain.shape
    # ReLU through the authenticated comparison is exact (the pre-activations are far from
    # the 2^15 bound), so only the fixed-point bound applies: 8 ulps per step per layer,
    # scaled by lr * max|x| * max w(y), over 3 steps and 3 layers.
    assert np.abs(secure - plain).max() <= 3 * 3 * 0.5 * 6 * 3 * 8 * ULP


def test_cheat_in_a_comparison_stops_every_party():
    adversary = Adversary("compare", at=1, seed=3)  # the second step's comparison (2 steps)
    collected, codes = spawn(train_party, parties=2, rows=40, width=3, epochs=1, batch=40, hidden=(3,),
                             adversary=adversary, cheater=1, timeout_s=300)
    for rank in range(2):
        status, value = collected[rank]
        assert status == "error" and "CheatDetected" in value, value
        assert codes[rank] != 0
