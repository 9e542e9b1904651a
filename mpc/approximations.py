"""Secure softmax pieces, each an approximation on a stated input range, evaluated in the ring.

Their errors, as measured under MPC over the whole range (tests/test_losses.py), are listed
in the README; every constant used here is far above the ring's resolution u = 2^-16.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

# exp on [-EXP_FLOOR, 0]: below, exp(x) < 1.2e-7, under one ulp, so inputs are clipped there.
EXP_FLOOR = 16.0
EXP_SQUARINGS = 4  # exp(x) = p(x / 16)^16, p a degree-5 fit of exp on [-1, 0]
EXP_DEGREE = 5
# fit_exp_coefficients() rounded to float32: the monomial coefficients a_0..a_5 of p
EXP_COEFFICIENTS = (9.999995708e-01, 9.999686241e-01, 4.996269468e-01, 1.650295408e-01,
                    3.835800453e-02, 5.107315618e-03)
RECIPROCAL_TARGET = 2.0**-20  # Newton iterates until the relative error is below this
# Largest absolute errors as evaluated in the ring (2 parties, tests/test_custom_models.py), with
# margin: exp on [-24, 0] measured 5.5e-4 (the 4 squarings multiply the few ulps of p(y) by 16;
# CrypTen's exp errs by 3.8e-3 on [-16, 0]); 1/x on [1, K] measured 3.6e-5 for K = 2..100;
# softmax of K = 2..10 logits spread over [-20, 20] measured 1.7e-4.
EXP_MAX_ERROR = 1e-3
RECIPROCAL_MAX_ERROR = 6e-5
SOFTMAX_MAX_ERROR = 3e-4


def fit_exp_coefficients() -> np.ndarray:
    """Least-squares fit of exp on [-1, 0] at Chebyshev points (near minimax), degree 5."""
    y = (np.cos(np.linspace(0.0, np.pi, 2001)) - 1.0) / 2.0
    return np.polynomial.polynomial.polyfit(y, np.exp(y), EXP_DEGREE)


def clip_below(crypten: Any, x: Any, floor: float) -> Any:
    """max(x, floor) with one comparison; the indicator is an integer sharing (no truncation)."""
    below = (x - floor).lt(0)
    return x + below * (floor - x)


def secure_exp_nonpositive(crypten: Any, x: Any) -> Any:
    """exp(x) for x <= 0: clip at -16, y = x / 16 in [-1, 0], p(y) by powers, 4 squarings."""
    y = clip_below(crypten, x, -EXP_FLOOR).div(2**EXP_SQUARINGS)
    y2 = y.square()
    level = crypten.stack([y, y2]) * crypten.stack([y2, y2])
    y3, y4 = level[0], level[1]
    y5 = y2 * y3
    powers = crypten.stack([y, y2, y3, y4, y5])
    coefficients = torch.tensor(EXP_COEFFICIENTS[1:], dtype=torch.float32, device=powers.device)
    result = (powers * coefficients.reshape(-1, *([1] * x.dim()))).sum(0) + EXP_COEFFICIENTS[0]
    for _ in range(EXP_SQUARINGS):
        result = result.square()
    return result


def reciprocal_iterations(low: float, high: float) -> tuple[float, float, int]:
    """For x in [low, high]: the linear start y0 = a - b x with the smallest worst relative error
    E = |1 - x y0| (equal at both ends and the middle), and the Newton steps that bring E^(2^n)
    below RECIPROCAL_TARGET."""
    b = 8.0 / ((low + high) ** 2 + 4.0 * low * high)
    error = 1.0 - b * low * high
    steps = max(1, math.ceil(math.log2(math.log(RECIPROCAL_TARGET) / math.log(error))))
    return b * (low + high), b, steps


def secure_reciprocal(x: Any, low: float, high: float) -> Any:
    """1/x for x in [low, high] by Newton's iteration y <- y (2 - x y) from a linear start."""
    a, b, steps = reciprocal_iterations(low, high)
    y = x * -b + a
    for _ in range(steps):
        y = y * (2 - x * y)
    return y


def row_max(crypten: Any, x: Any) -> Any:
    """The maximum of each row by a tree of pairwise maxima: ceil(log2 K) comparisons deep."""
    while x.size(1) > 1:
        half = x.size(1) // 2
        first, second = x[:, :half], x[:, half:2 * half]
        larger = first + (second - first).relu()
        x = larger if x.size(1) % 2 == 0 else crypten.cat([larger, x[:, 2 * half:]], dim=1)
    return x


def secure_softmax(crypten: Any, logits: Any) -> Any:
    """Row-wise softmax of a rows x K tensor: subtract the row maximum (so every exponent is
    <= 0 and the row sum lies in [1, K]), exponentiate, multiply by the sum's reciprocal."""
    classes = logits.size(1)
    shifted = logits - row_max(crypten, logits)
    powers = secure_exp_nonpositive(crypten, shifted)
    total = powers.sum(1, keepdim=True)
    return powers * secure_reciprocal(total, 1.0, float(classes))


# Wide-range square root and reciprocal (Adam's denominator). One batched comparison against
# public powers of the base finds each element's binade [b^k, b^(k+1)); the binade's
# indicator selects public powers of two (integer multiples of u, so no truncation), which
# bring the element into [1, b), where Newton's iteration runs from a fitted linear start.
INV_SQRT_START = (1.06, 0.15)  # y0 = 1.06 - 0.15 x: |1 - sqrt(x) y0| <= 0.09 on [1, 4]
INV_SQRT_STEPS = 3  # then 0.0118, 2.1e-4, 6.5e-8 (exact arithmetic)
SQRT_EXPONENTS = range(-8, 16)  # x in [0, 4^16); below 4^-8 (one ulp) counts as the lowest binade
RECIPROCAL_EXPONENTS = range(-2, 17)  # denominators in [2^-2, 2^17)
_SHIFT = 4**8  # 4^-k < u for k > 8: such x are first divided by 4^8 (a truncation)
# Measured in the ring (tests/test_optim.py), with margin: sqrt relative error 4.8e-5 for x in
# [1, 1e9]; below 1 the input's own ulp dominates (sqrt(u/2) scale): 7.6e-4 absolute; the
# quotient n/d for |n| <= d, d in [0.25, 1e5]: 5.6e-5 absolute.
SQRT_MAX_RELATIVE_ERROR = 1e-4
SQRT_MAX_ABSOLUTE_ERROR = 1.5e-3
DIVIDE_MAX_ERROR = 1e-4


def _binades(crypten: Any, x: Any, base: int, exponents: range) -> tuple[Any, list[int]]:
    """Integer sharings, one per binade, of [x in [b^k, b^(k+1))] for k in ``exponents``
    (x below the first binade counts as in it), and the list of those k."""
    shape = (-1, *([1] * x.dim()))
    thresholds = torch.tensor([float(base) ** k for k in exponents[1:]], dtype=torch.float32, device=x.device)
    above = (crypten.stack([x] * len(thresholds)) - thresholds.reshape(shape)).ge(0)
    inside = [1 - above[0], *[above[j] - above[j + 1] for j in range(len(thresholds) - 1)], above[-1]]
    return crypten.stack(inside), list(exponents)


def _select(crypten: Any, indicators: Any, values: list[float]) -> Any:
    """sum_j indicator_j * value_j for public values that are multiples of u, exactly."""
    units = torch.tensor([round(value * 2**16) for value in values], dtype=torch.long, device=indicators.device)
    selected = (indicators * units.reshape(-1, *([1] * (indicators.dim() - 1)))).sum(0)
    selected.encoder = crypten.encoder.FixedPointEncoder()  # those integers count units of u
    return selected


def secure_sqrt(crypten: Any, x: Any) -> Any:
    """sqrt(x) for x in [0, 4^16): x = 4^k m with m in [1, 4), sqrt(x) = 2^k m / sqrt(m)."""
    inside, exponents = _binades(crypten, x, 4, SQRT_EXPONENTS)
    near = _select(crypten, inside, [4.0**-k if k <= 8 else 0.0 for k in exponents])
    far = _select(crypten, inside, [4.0 ** -(k - 8) if k > 8 else 0.0 for k in exponents])
    root = _select(crypten, inside, [2.0**k for k in exponents])
    mantissa = (crypten.stack([x, x.div(_SHIFT)]) * crypten.stack([near, far])).sum(0)
    a, b = INV_SQRT_START
    y = mantissa * -b + a
    for _ in range(INV_SQRT_STEPS):
        y = y * (3 - mantissa * y.square()) / 2
    return mantissa * y * root


def secure_divide(crypten: Any, numerator: Any, denominator: Any) -> Any:
    """numerator / denominator for denominators in [1/4, 2^17): d = 2^k m with m in [1, 2);
    the numerator is scaled by 2^-k too, so a small quotient keeps its digits."""
    inside, exponents = _binades(crypten, denominator, 2, RECIPROCAL_EXPONENTS)
    scale = _select(crypten, inside, [2.0**-k for k in exponents])
    both = crypten.stack([denominator, numerator]) * crypten.stack([scale, scale])
    return both[1] * secure_reciprocal(both[0], 1.0, 2.0)
