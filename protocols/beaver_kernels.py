"""The elementwise Beaver product's local pass on the CPU, compiled: one loop, into c.

Once eps = x - a and delta = y - b are open, a party's share of x y is
c + eps b + a delta (+ eps delta at party 0). As torch operations that is three passes over
c, and the opening's own buffer for this party's masked shares (x - a, y - b) is fresh memory;
here the masked shares may be written over a and b themselves (a triple is dealt for one
product), and the loop takes a and b back as x - (x - a), y - (y - b) while it reads them:
one pass, word for word the same sum in Z_2^64 (uint64 wraps as int64 does).
"""

from __future__ import annotations

import numba
import numpy as np
import torch


@numba.njit(nogil=True, cache=True)
def _finish(x: np.ndarray, y: np.ndarray, masked_x: np.ndarray, masked_y: np.ndarray, epsilon: np.ndarray,
            delta: np.ndarray, c: np.ndarray, leader: bool) -> None:
    """c <- c + eps (y - masked_y) + (x - masked_x) delta (+ eps delta at the leader)."""
    for i in range(c.shape[0]):
        e, d = epsilon[i], delta[i]
        value = c[i] + e * (y[i] - masked_y[i]) + (x[i] - masked_x[i]) * d
        if leader:
            value += e * d
        c[i] = value


def _words(tensor: torch.Tensor) -> np.ndarray:
    return tensor.view(-1).numpy().view(np.uint64)


def finish(x: torch.Tensor, y: torch.Tensor, masked: torch.Tensor, opened: torch.Tensor, c: torch.Tensor,
           leader: bool) -> torch.Tensor:
    """Writes this party's share of x y over ``c`` and returns it. ``masked`` holds this party's
    (x - a, y - b) and ``opened`` their sums (eps, delta), each (2, *x.shape); every tensor is
    contiguous CPU int64."""
    _finish(_words(x), _words(y), _words(masked[0]), _words(masked[1]), _words(opened[0]), _words(opened[1]),
            _words(c), leader)
    return c


def warm_up() -> None:
    """Load the compiled kernel (from numba's cache after the first run on a machine) now,
    not inside the first product."""
    one = torch.zeros(1, dtype=torch.int64)
    pair = torch.zeros(2, 1, dtype=torch.int64)
    for leader in (True, False):
        finish(one, one, pair, pair, one.clone(), leader)
