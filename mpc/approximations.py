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
# margin: exp on [-24, 0] measured 5.3e-4 (the 4 squarings multiply the few ulps of p(y) by 16;
# CrypTen's exp errs by 3.8e-3 on [-16, 0]); 1/x on [1, K] measured 3.6e-5 for K = 2..100;
# softmax of K = 2..10 logits spread over [-20, 20] measured 1.1e-4.
EXP_MAX_ERROR = 1e-3
RECIPROCAL_MAX_ERROR = 6e-5
SOFTMAX_MAX_ERROR = 3e-4


# Public coefficients of a sum of secret terms are applied as the integers round(c 2^24): each
# product is exact, the sum is truncated once (by 2^24), and a coefficient keeps 24 bits
# below the point instead of 16 (under malicious security each truncation costs 64
# sacrificed random bits per element, so one per sum instead of one per term matters).
COEFFICIENT_BITS = 24


def linear_combinations(crypten: Any, terms: list[Any], rows: list[Any]) -> Any:
    """The stack, over the rows of public real coefficients c_r, of sum_k c_rk terms_k (|c_rk|
    < 2^7, terms of magnitude below 2^15), with one truncation."""
    sums = []
    for row in rows:
        products = [term * round(float(c) * 2**COEFFICIENT_BITS) for term, c in zip(terms, row)]  # ints: exact
        total = products[0]
        for product in products[1:]:
            total = total + product
        sums.append(total)
    return crypten.stack(sums).div(2**COEFFICIENT_BITS)


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
    result = linear_combinations(crypten, [y, y2, y3, y4, y5], [EXP_COEFFICIENTS[1:]])[0] + EXP_COEFFICIENTS[0]
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
# secure_inverse_sqrt over [4^-8, 4^16) against 1/sqrt of the value the ring holds: measured
# 5e-5 (tests/test_layers.py); LayerNorm's variances below 4^-8 (= 1.5e-5, one ulp) hold too
# few digits for a relative error to mean anything
INVERSE_SQRT_MAX_RELATIVE_ERROR = 1e-4
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


def select_constants(crypten: Any, indicators: Any, values: list[float]) -> Any:
    """sum_j indicator_j * value_j for public values that are multiples of u, exactly."""
    units = torch.tensor([round(value * 2**16) for value in values], dtype=torch.long, device=indicators.device)
    selected = (indicators * units.reshape(-1, *([1] * (indicators.dim() - 1)))).sum(0)
    selected.encoder = crypten.encoder.FixedPointEncoder()  # those integers count units of u
    return selected


def _sqrt_mantissa(crypten: Any, x: Any) -> tuple[Any, Any, list[int]]:
    """x = 4^k m with m in [1, 4), for x in [0, 4^16): m, and the binade indicators with their k."""
    inside, exponents = _binades(crypten, x, 4, SQRT_EXPONENTS)
    near = select_constants(crypten, inside, [4.0**-k if k <= 8 else 0.0 for k in exponents])
    far = select_constants(crypten, inside, [4.0 ** -(k - 8) if k > 8 else 0.0 for k in exponents])
    mantissa = (crypten.stack([x, x.div(_SHIFT)]) * crypten.stack([near, far])).sum(0)
    return mantissa, inside, exponents


def _inverse_sqrt_newton(mantissa: Any) -> Any:
    """1/sqrt(m) for m in [1, 4): Newton's iteration from a fitted linear start."""
    a, b = INV_SQRT_START
    y = mantissa * -b + a
    for _ in range(INV_SQRT_STEPS):
        y = y * (3 - mantissa * y.square()) / 2
    return y


def secure_sqrt(crypten: Any, x: Any) -> Any:
    """sqrt(x) for x in [0, 4^16): x = 4^k m with m in [1, 4), sqrt(x) = 2^k m / sqrt(m)."""
    mantissa, inside, exponents = _sqrt_mantissa(crypten, x)
    root = select_constants(crypten, inside, [2.0**k for k in exponents])
    return mantissa * _inverse_sqrt_newton(mantissa) * root


def secure_inverse_sqrt(crypten: Any, x: Any) -> tuple[Any, Any]:
    """1/sqrt(x) for x in [4^-8, 4^16) as a product ``scale * y``: scale = 2^-k exactly (a
    multiple of u) and y = 1/sqrt(m) in (1/2, 1]. A caller multiplies its numerator by the
    scale first, so that a small result keeps its digits."""
    mantissa, inside, exponents = _sqrt_mantissa(crypten, x)
    return select_constants(crypten, inside, [2.0**-k for k in exponents]), _inverse_sqrt_newton(mantissa)


def secure_divide(crypten: Any, numerator: Any, denominator: Any) -> Any:
    """numerator / denominator for denominators in [1/4, 2^17): d = 2^k m with m in [1, 2);
    the numerator is scaled by 2^-k too, so a small quotient keeps its digits."""
    inside, exponents = _binades(crypten, denominator, 2, RECIPROCAL_EXPONENTS)
    scale = select_constants(crypten, inside, [2.0**-k for k in exponents])
    both = crypten.stack([denominator, numerator]) * crypten.stack([scale, scale])
    return both[1] * secure_reciprocal(both[0], 1.0, 2.0)


# Odd Chebyshev series in t in [-1, 1], evaluated by T(P + j) = 2 T(P) T(j) - T(P - j) from the
# highest power of two P reached so far: degree 15 in 4 levels of products, 23 or 31 in 5.
def odd_chebyshev_terms(crypten: Any, t: Any, degree: int) -> list[Any]:
    """T_1(t), T_3(t), ..., T_degree(t) (odd degree >= 3)."""
    terms = {1: t, 2: t.square() * 2 - 1}
    power = 2
    while max(k for k in terms if k % 2) < degree:
        odd = [j for j in range(1, power, 2) if power + j <= degree]
        double = 2 * power + 1 <= degree  # the next level needs T(2P)
        left = [terms[power]] * (len(odd) + double)
        right = [terms[j] for j in odd] + ([terms[power]] if double else [])
        level = crypten.stack(left) * crypten.stack(right)
        for i, j in enumerate(odd):
            terms[power + j] = level[i] * 2 - terms[power - j]
        if double:
            terms[2 * power] = level[-1] * 2 - 1
        power *= 2
    return [terms[k] for k in range(1, degree + 1, 2)]


def fit_odd_chebyshev(function: Any, degree: int) -> np.ndarray:
    """Coefficients of T_1, T_3, ..., T_degree for an odd ``function`` of t on [-1, 1]: Lawson's
    iteration towards the minimax fit."""
    t = np.cos(np.linspace(0.0, np.pi, 6001))
    target = function(t)
    basis = np.stack([np.polynomial.chebyshev.chebval(t, [0] * k + [1]) for k in range(1, degree + 1, 2)], axis=1)
    weights = np.ones_like(t)
    for _ in range(300):
        root = np.sqrt(weights)
        coefficients = np.linalg.lstsq(basis * root[:, None], target * root, rcond=None)[0]
        weights = weights * np.abs(basis @ coefficients - target)
        weights /= weights.sum()
    return coefficients


# GELU(x) = x Phi(x). Inside [-GELU_CLIP, GELU_CLIP], Phi(x) - 1/2 and GELU'(x) - 1/2 =
# Phi(x) + x phi(x) - 1/2 (both odd in x) are degree-23 Chebyshev series in t = x / CLIP,
# fitted to 7.5e-7 and 1.3e-5; outside, one batched comparison makes GELU x or 0 and GELU'
# 1 or 0, which errs by at most CLIP Phi(-CLIP) = 1.4e-6 and CLIP phi(CLIP) + Phi(-CLIP) = 7.7e-6.
GELU_CLIP = 5.0
GELU_DEGREE = 23
# fit_gelu_coefficients() rounded to 10 digits: rows Phi, GELU'
GELU_COEFFICIENTS = (
    (6.234577655e-01, -1.760245509e-01, 7.617494816e-02, -3.371905105e-02, 1.411472272e-02, -5.457414859e-03,
     1.936314671e-03, -6.303995000e-04, 1.888179712e-04, -5.222197759e-05, 1.338846297e-05, -3.350875487e-06),
    (6.507648255e-01, -2.441016038e-01, 1.552968070e-01, -9.943857556e-02, 5.739605117e-02, -2.917702731e-02,
     1.307617513e-02, -5.206636812e-03, 1.858665957e-03, -6.000474658e-04, 1.765357110e-04, -5.058684670e-05),
)
# The smallest coefficients are below u (3.4e-6): they are applied as integers times 2^24
# (linear_combinations: the smallest is 56 units, 0.4 % off); t = x / CLIP likewise
# (multiply_precisely: 1/5 is no multiple of u).
# Measured in the ring (2 parties, tests/test_layers.py) over x in [-40, 40]: 9.2e-5 and
# 9.1e-5 (the product x Phi's truncation and the tails included), with margin.
GELU_MAX_ERROR = 1.5e-4
GELU_DERIVATIVE_MAX_ERROR = 1.5e-4


def fit_gelu_coefficients() -> np.ndarray:
    """Rows: the odd series of Phi(CLIP t) - 1/2 and of GELU'(CLIP t) - 1/2 on [-1, 1]."""
    def normal_cdf(x: np.ndarray) -> np.ndarray:
        return 0.5 * (1.0 + torch.special.erf(torch.from_numpy(x / math.sqrt(2.0))).numpy())

    def density(x: np.ndarray) -> np.ndarray:
        return np.exp(-x * x / 2) / math.sqrt(2 * math.pi)

    clip = GELU_CLIP
    return np.stack([fit_odd_chebyshev(lambda t: normal_cdf(clip * t) - 0.5, GELU_DEGREE),
                     fit_odd_chebyshev(lambda t: normal_cdf(clip * t) + clip * t * density(clip * t) - 0.5,
                                       GELU_DEGREE)])


def secure_gelu(crypten: Any, x: Any) -> tuple[Any, Any]:
    """GELU(x) and GELU'(x) under MPC, for every x (the derivative for the backward pass)."""
    clip = GELU_CLIP
    outside = crypten.stack([clip - x, x + clip]).lt(0)  # [x > clip, x < -clip], integer sharings
    pull = outside * crypten.stack([clip - x, -clip - x])
    t = multiply_precisely(x + pull[0] + pull[1], 1 / clip)
    terms = odd_chebyshev_terms(crypten, t, GELU_DEGREE)
    series = linear_combinations(crypten, terms, GELU_COEFFICIENTS) + 0.5  # [Phi(t clip), GELU'(t clip)]
    inside = 1 - outside[0] - outside[1]
    factors = crypten.stack([inside, inside]) * series + crypten.stack([outside[0], outside[0]])
    return x * factors[0], factors[1]


# significant bits a public factor keeps in multiply_precisely: |x| < 2^26 then stays inside
# the truncation's 2^62 range (x carries 16 fractional bits)
PRECISE_FACTOR_BITS = 20


def multiply_precisely(x: Any, factor: float) -> Any:
    """``x * factor`` for a public ``factor`` kept to PRECISE_FACTOR_BITS significant bits:
    the shares times the integer round(factor 2^k) (exact), then one division by 2^k (a
    single truncation). Encoded as a 16-bit constant, a factor of 8e-4 would be 51 units of
    u, off by up to 1 %."""
    if factor == 0:
        return x * 0
    exponent = max(0, PRECISE_FACTOR_BITS - 1 - math.floor(math.log2(abs(factor))))
    return (x * round(factor * 2**exponent)).div(2**exponent)
