"""The semi-honest training sigmoid (mpc.training.secure_sigmoid) as evaluated under MPC, over
its whole input range, against the exact sigmoid: the documented error holds everywhere."""

from __future__ import annotations

import torch

from mpc.training import SIGMOID_CLIP, SIGMOID_MAX_ERROR
from sessions import run_parties

# dense over the polynomial's range and well past the clip; then out to +-1e4
DENSE = torch.linspace(-3 * SIGMOID_CLIP, 3 * SIGMOID_CLIP, 16801, dtype=torch.float64)
FAR = torch.logspace(0, 4, 400, dtype=torch.float64)
GRID = torch.cat([DENSE, FAR, -FAR, torch.tensor([SIGMOID_CLIP, -SIGMOID_CLIP], dtype=torch.float64)])


def _evaluated(crypten, rank):
    from mpc.training import secure_sigmoid

    # plain values through the result queue
    return secure_sigmoid(crypten.cryptensor(GRID.float(), src=0)).get_plain_text().tolist()


def test_secure_sigmoid_as_evaluated_is_within_its_documented_error_everywhere():
    values = torch.tensor(run_parties(_evaluated, world=2, timeout_s=600)[0], dtype=torch.float64)
    # the grid's points are encoded to 16 fractional bits: compare at the encoded inputs
    encoded = torch.round(GRID.float().double() * 2**16) / 2**16
    error = (values - torch.sigmoid(encoded)).abs()
    assert error.max().item() <= SIGMOID_MAX_ERROR, (error.max().item(), GRID[error.argmax()].item())
    assert error[: len(DENSE)].max().item() > SIGMOID_MAX_ERROR / 2  # the bound is not vacuous
