"""Planned steps under protocol=malicious: two models trained in one session with batches of
one size (the bench's W5 then W6) each get their own plan, and the second one trains as in
float, within the weight bound mpc.tolerance derives from the fixed point."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from harness import run_ok  # noqa: E402
from tensor_programs import train_two_models_one_batch_size, two_models  # noqa: E402

from mpc.losses import WeightedBinaryCrossEntropy  # noqa: E402
from mpc.metrics import ClassWeights  # noqa: E402
from mpc.reference import PooledData, train_plaintext  # noqa: E402
from mpc.tolerance import training_weight_bound  # noqa: E402
from mpc.training import SIGMOID_MAX_ERROR, TrainConfig, epoch_order  # noqa: E402


def test_a_second_model_trained_with_the_same_batch_size_gets_its_own_plan():
    lr, batch = 0.5, 8
    _, logreg, x, y = two_models()
    order = epoch_order(len(x), 0, 0).tolist()
    revealed = run_ok(train_two_models_one_batch_size, parties=2, lr=lr, batch=batch, order=order, timeout_s=300)
    weights = ClassWeights(negative=1.0, positive=1.0)
    config = TrainConfig(lr=lr, batch_size=batch, epochs=1)
    plain, _ = train_plaintext(logreg, PooledData(x, y, None, None), config, WeightedBinaryCrossEntropy(weights), 0)
    expected = np.concatenate([plain.weight.detach().numpy().reshape(-1), plain.bias.detach().numpy()])
    bound = training_weight_bound(x, y.reshape(-1), logreg, config, weights, 0, SIGMOID_MAX_ERROR)
    for party in revealed:
        weight, bias = (value for name, value in sorted(party.items(), key=lambda item: "bias" in item[0]))
        secure = np.concatenate([weight.reshape(-1), bias.reshape(-1)])
        assert np.linalg.norm(secure - expected) <= bound.weight_error, (secure, expected, bound)
    assert all(np.array_equal(revealed[0][name], revealed[1][name]) for name in revealed[0])
