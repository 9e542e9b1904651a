"""The malicious suite's sigmoid as it runs in the ring, against the exact sigmoid."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from harness import run_ok  # noqa: E402
from train_programs import sigmoid_party  # noqa: E402

from protocols.malicious.train import (SIGMOID_FIXED_POINT_ERROR, SIGMOID_MAX_ERROR, SIGMOID_RANGE,  # noqa: E402
                                       SIGMOID_SCALED, sigmoid_poly_plain)

INSIDE = np.linspace(-SIGMOID_RANGE, SIGMOID_RANGE, 6001)
OUTSIDE = np.array([-400.0, -30.0, -15.0, -13.0, 13.0, 15.0, 30.0, 400.0])


def test_every_coefficient_is_well_above_the_resolution():
    assert np.abs(SIGMOID_SCALED).min() > 2 ** 10 * 2.0 ** -16


def test_sigmoid_as_evaluated_keeps_its_documented_error_and_range():
    values = np.array(run_ok(sigmoid_party, parties=2, grid=[*INSIDE, *OUTSIDE], timeout_s=300)[0])
    inside, outside = values[:len(INSIDE)], values[len(INSIDE):]
    exact = 1 / (1 + np.exp(-INSIDE))
    # on [-12, 12]: the fit's error plus the fixed-point bound, and no better than the fit
    assert np.abs(inside - exact).max() <= SIGMOID_MAX_ERROR + SIGMOID_FIXED_POINT_ERROR
    assert np.abs(inside - sigmoid_poly_plain(INSIDE)).max() <= SIGMOID_FIXED_POINT_ERROR
    # outside, it is the diverging polynomial (documented; the ring holds it up to |z| ~ 650)
    polynomial = sigmoid_poly_plain(OUTSIDE)
    assert np.allclose(outside, polynomial, rtol=1e-3, atol=SIGMOID_FIXED_POINT_ERROR * 400 ** 5 / 12 ** 5)
    assert np.abs(outside - 1 / (1 + np.exp(-OUTSIDE)))[OUTSIDE > 14].min() > 1.0
