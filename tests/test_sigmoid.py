"""The semi-honest training sigmoid (mpc.training.secure_sigmoid) and the binary loss's
weighted residual built on it (weighted_sigmoid_residual) as evaluated under MPC, over their
whole input range, against the exact values: the documented errors hold everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpc.tolerance import ULP
from mpc.training import (SIGMOID_CLIP, SIGMOID_FACTOR_BOUND, SIGMOID_MAX_ERROR, SIGMOID_SCALE,
                          sigmoid_split_coefficients)
from sessions import run_parties

# dense over the polynomial's range and well past the clip; then out to +-1e4
DENSE = torch.linspace(-3 * SIGMOID_CLIP, 3 * SIGMOID_CLIP, 16801, dtype=torch.float64)
FAR = torch.logspace(0, 4, 400, dtype=torch.float64)
GRID = torch.cat([DENSE, FAR, -FAR, torch.tensor([SIGMOID_CLIP, -SIGMOID_CLIP], dtype=torch.float64)])
# class weights from balanced (0.5) to a 1%-positive table's (50), both labels at every input
WEIGHTS = torch.linspace(0.5, 50.0, 97, dtype=torch.float64).repeat(GRID.numel() // 97 + 1)[: GRID.numel()]
LABELS = (torch.arange(GRID.numel()) % 2).double()


def _evaluated(crypten, rank):
    from mpc.training import secure_sigmoid, weighted_sigmoid_residual

    x = crypten.cryptensor(GRID.float(), src=0)
    weights, labels = crypten.cryptensor(WEIGHTS.float(), src=0), crypten.cryptensor(LABELS.float(), src=0)
    # plain values through the result queue
    return (secure_sigmoid(x).get_plain_text().tolist(),
            weighted_sigmoid_residual(x, weights, labels).get_plain_text().tolist())


# topbits: products left untruncated to save rounds (divided exactly at any width); local:
# CrypTen's two-party division, wrong with probability |x| / 2^64, so at 2^52 about four of
# this grid's values would be off by 2^47 (the sigmoid keeps its products narrow there)
@pytest.fixture(scope="module", params=["topbits", "local"])
def evaluated(request):
    protocol = {"truncation": request.param}
    sigmoid, residual = run_parties(_evaluated, world=2, timeout_s=600, protocol=protocol)[0]
    return torch.tensor(sigmoid, dtype=torch.float64), torch.tensor(residual, dtype=torch.float64)


def _encoded(values: torch.Tensor) -> torch.Tensor:
    """The values as 16 fractional bits encode them (the inputs the parties computed on)."""
    return torch.round(values.float().double() * 2**16) / 2**16


def test_secure_sigmoid_as_evaluated_is_within_its_documented_error_everywhere(evaluated):
    error = (evaluated[0] - torch.sigmoid(_encoded(GRID))).abs()
    assert error.max().item() <= SIGMOID_MAX_ERROR, (error.max().item(), GRID[error.argmax()].item())
    assert error[: len(DENSE)].max().item() > SIGMOID_MAX_ERROR / 2  # the bound is not vacuous


def test_weighted_residual_is_within_the_weighted_sigmoid_error_and_its_truncations(evaluated):
    weights = _encoded(WEIGHTS)
    exact = weights * (torch.sigmoid(_encoded(GRID)) - LABELS)
    error = (evaluated[1] - exact).abs()
    # the sigmoid's error times w, the truncations of w t (times |g|), of w (1/2 - y) and of the last product
    bound = weights * SIGMOID_MAX_ERROR + (SIGMOID_FACTOR_BOUND + 2) * ULP
    assert (error <= bound).all(), (error - bound).max().item()
    assert (error / weights)[: len(DENSE)].max().item() > SIGMOID_MAX_ERROR / 2  # not vacuous


def test_the_factor_after_t_stays_within_its_bound_over_the_whole_range():
    """|g(s)| on every s that occurs, 2 t^2 - 1 for |t| <= CLIP / SCALE (the series over t;
    the truncated factor w t is multiplied by g)."""
    a, b = sigmoid_split_coefficients()
    s = np.linspace(-1.0, 2 * (SIGMOID_CLIP / SIGMOID_SCALE) ** 2 - 1, 200001)
    chebval = np.polynomial.chebyshev.chebval
    g = chebval(s, a) + chebval(s, [0, 0, 0, 0, 1]) * chebval(s, b)
    assert np.abs(g).max() <= SIGMOID_FACTOR_BOUND
    assert np.abs(g).max() > 0.99 * SIGMOID_FACTOR_BOUND  # the bound is tight


def _residual_paths(crypten, rank):
    """The residual of one grid on raw shares and by the MPCTensor path, opened, with the
    rounds and bytes each took."""
    from mpc import share_ops
    from mpc.training import weighted_sigmoid_residual

    x = crypten.cryptensor(GRID.float(), src=0)
    weights, labels = crypten.cryptensor(WEIGHTS.float(), src=0), crypten.cryptensor(LABELS.float(), src=0)
    stats, results = crypten.communicator.get().stats, [share_ops.applies(crypten, x, weights, labels)]
    for on_shares in (True, False):
        before = (stats.rounds, stats.bytes_sent)
        residual = weighted_sigmoid_residual(x, weights, labels, on_shares=on_shares)
        spent = (stats.rounds - before[0], stats.bytes_sent - before[1])
        results.append((residual.get_plain_text().tolist(), spent))
    return results


@pytest.mark.parametrize("world,truncation", [(2, "topbits"), (3, "pairs")])
def test_residual_on_raw_shares_matches_plaintext_in_the_mpctensor_paths_rounds_and_bytes(world, truncation):
    """The raw-share residual (mpc.share_ops) is within the documented bound of the exact
    values, as the MPCTensor path it replaces is, and takes the same rounds and bytes (the
    same protocol parts in the same order)."""
    applies, (raw, raw_spent), (reference, reference_spent) = run_parties(
        _residual_paths, world=world, timeout_s=600, protocol={"truncation": truncation})[0]
    assert applies and raw_spent == reference_spent and raw_spent[0] > 0
    weights = _encoded(WEIGHTS)
    exact = weights * (torch.sigmoid(_encoded(GRID)) - LABELS)
    bound = weights * SIGMOID_MAX_ERROR + (SIGMOID_FACTOR_BOUND + 2) * ULP
    for values in (raw, reference):
        error = (torch.tensor(values, dtype=torch.float64) - exact).abs()
        assert (error <= bound).all(), (error - bound).max().item()
