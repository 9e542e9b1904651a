"""The authenticated share as a CrypTen tensor type: every operation the trainer and
crypten.nn use, under MPC with 2 and 3 parties, against float64, within bounds derived
from the 16 fractional bits; a tampered share stops every party at the next reveal."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import run_ok  # noqa: E402
from tensor_programs import (disagreement, inputs, plain_operations, run_operations, tampered_openings,  # noqa: E402
                             tampered_reveal)

from mpc.training import SIGMOID_MAX_ERROR  # noqa: E402

U = 2.0**-16  # one unit of the fixed point; an encoding is within U / 2, a truncation within U


def bounds(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> dict[str, float]:
    """The largest error each operation may make, from the encodings and truncations it does."""
    enc = U / 2
    ax, ay, aw = np.abs(x).max(), np.abs(y).max(), np.abs(w).max()
    product = (ax + ay) * enc + enc**2 + U  # two encoded factors, one truncation
    exact = {name: enc for name in ("neg", "t", "transpose", "view", "reshape", "getitem", "index", "expand",
                                    "unsqueeze", "squeeze", "flatten", "pad", "relu")}
    return {
        **exact, "add": 2 * enc, "sub": 2 * enc, "add_public": enc, "rsub_public": enc,
        "mul": product, "square": 2 * ay * enc + enc**2 + U, "mul_float": 0.3 * enc + ax * enc + U,
        "mul_int": 3 * enc, "mul_tensor": 3 * enc + ax * enc + U,
        "div_pow2": enc / 4 + U, "div_int": enc / 7 + ax / 7 * 2.0**-17 + U, "div_float": enc / 2.5 + ax * enc + U,
        "div_large": enc / 2**8 + U,
        "matmul": 4 * ((ax + aw) * enc + enc**2) + U, "matmul_vector": 4 * ((ax + aw) * enc + enc**2) + U,
        "sum": 12 * enc, "sum_dim": 3 * enc, "sum_keepdim": 4 * enc, "mean": enc + 4 * enc / 4 + U,
        "cat": enc, "stack": enc, "lt": 0.0, "ge": 0.0, "indicator_mul": enc, "compare_large": 0.0,
        "sigmoid": SIGMOID_MAX_ERROR,
    }


@pytest.mark.slow
@pytest.mark.parametrize("parties", [2, 3])
def test_operations_match_float(parties):
    data = inputs(parties)
    values = run_ok(run_operations, parties=parties, timeout_s=400)
    expected = plain_operations(data["x"], data["y"], data["w"], data["z"])
    limits = bounds(data["x"], data["y"], data["w"])
    assert set(limits) == set(expected)
    for rank, got in enumerate(values):
        assert got["_types"] == ["AuthenticatedTensor"]
        wrong = {name: np.shape(got[name]) for name, value in expected.items()
                 if np.shape(got[name]) != np.shape(value)}
        assert not wrong, f"party {rank}: wrong shapes {wrong}"
        errors = {name: float(np.abs(np.asarray(got[name]) - value).max()) for name, value in expected.items()}
        over = {name: (error, limits[name]) for name, error in errors.items() if error > limits[name]}
        assert not over, f"party {rank}: errors over their bounds {over}"
        # a reveal to one party: only it learns the value
        if rank == parties - 1:
            assert np.abs(np.asarray(got["_private"]) - expected["mul"]).max() <= limits["mul"]
        else:
            assert got["_private"] is None
    assert all(v["sum"] == values[0]["sum"] for v in values)  # every party saw the same values


@pytest.mark.slow
@pytest.mark.parametrize("parties,cheater", [(2, 1), (3, 0)])
def test_tampered_share_detected_at_reveal(parties, cheater):
    verdicts = run_ok(tampered_reveal, parties=parties, cheater=cheater, timeout_s=300)
    assert verdicts == ["detected: MAC check"] * parties


@pytest.mark.slow
def test_a_party_holding_other_public_facts_stops_every_party():
    assert run_ok(disagreement, parties=3, liar=1, timeout_s=300) == ["detected: public agreement"] * 3


@pytest.mark.slow
def test_a_tampered_batched_matmul_convolution_or_verify_opening_stops_every_party():
    """The openings the detection trials' computation does not make: a batched matrix
    product's and a convolution's masked differences, and the masked opening that checks
    kept shares; each altered by each party in turn, 4 times per kind."""
    targets, trials = ["bmatmul", "conv", "verify"], 4
    outcomes = run_ok(tampered_openings, parties=3, targets=targets, trials=trials, timeout_s=300)
    for rank, outcome in enumerate(outcomes):
        assert [(target, trial) for target, trial, _ in outcome] == [(t, n) for t in targets for n in range(trials)]
        assert all(check == "MAC check" for _, _, check in outcome), (rank, outcome)
