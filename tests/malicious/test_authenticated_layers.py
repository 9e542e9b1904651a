"""The authenticated tensor's batched matrix products, convolutions (and their transposes,
the input gradients) and pooling, under MPC with 2 and 3 parties, against torch in float64
within bounds derived from the 16 fractional bits.

Every operand is encoded by rounding (within u/2, u = 2^-16). A product of two encoded
operands summed over T taps is within T ((|a| + |b|) u/2 + u^2/4) of the exact one, plus u
for its one truncation. Average pooling adds the window's encodings (their mean: u/2) and a
division by the window's size: by a truncation (u) for a power of two, else by a rounded
reciprocal (relative 2^-17, plus u). Max pooling selects one encoded value (u/2); its
backward places encoded gradients (u/2 each), summed where windows overlap.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from harness import run_ok  # noqa: E402
from layer_programs import (CASES, operands, plain_layers, plain_pooling_gradient, pooling_gradient, run_layers,  # noqa: E402
                            run_transformer_layers)

U = 2.0**-16
ENC = U / 2


def _product(name: str, taps: int) -> float:
    a, b = (np.abs(v).max() for v in operands(name))
    return taps * ((a + b) * ENC + ENC**2) + U


def bounds() -> dict[str, float]:
    largest = {name: float(np.abs(operands(name)[0]).max()) for name in CASES}
    return {
        "bmatmul": _product("bmatmul", 4), "bmatmul_broadcast": _product("bmatmul_broadcast", 4),
        "bmatmul_batch_broadcast": _product("bmatmul_batch_broadcast", 4),
        "conv2d": _product("conv2d", 2 * 3 * 2), "conv2d_dilated": _product("conv2d_dilated", 2 * 2 * 3),
        "conv1d": _product("conv1d", 2 * 3),
        "conv_transpose2d": _product("conv_transpose2d", 2 * 3 * 2), "conv_transpose1d": _product("conv_transpose1d", 2 * 2),
        "avg_pool2d": ENC + largest["avg_pool2d"] * 2.0**-17 + U, "avg_pool2d_pow2": ENC + U,
        "max_pool2d": ENC, "max_pool2d_ceil": ENC,
    }


def _flat_positions(one_hot: np.ndarray, stride: int, padding: int, width: int) -> np.ndarray:
    """One-hot windows (N, C, H', W', kh, kw) as torch's indices: positions in the H x W input."""
    n, c, out_h, out_w, kh, kw = one_hot.shape
    assert (one_hot.sum((-2, -1)) == 1).all()
    tap = one_hot.reshape(n, c, out_h, out_w, -1).argmax(-1)
    rows = np.arange(out_h)[:, None] * stride - padding + tap // kw
    cols = np.arange(out_w)[None, :] * stride - padding + tap % kw
    return rows * width + cols


@pytest.mark.slow
@pytest.mark.parametrize("parties", [2, 3])
def test_products_convolutions_and_pooling_match_torch(parties):
    results = run_ok(run_layers, parties=parties, timeout_s=400)
    expected, limits = plain_layers(), bounds()
    gradient, indices = plain_pooling_gradient()
    x, _ = pooling_gradient()
    for rank, got in enumerate(results):
        shapes = {name: np.shape(got[name]) for name in expected if np.shape(got[name]) != expected[name].shape}
        assert not shapes, f"party {rank}: wrong shapes {shapes}"
        errors = {name: float(np.abs(np.asarray(got[name]) - value).max()) for name, value in expected.items()}
        over = {name: (error, limits[name]) for name, error in errors.items() if error > limits[name]}
        assert not over, f"party {rank}: errors over their bounds {over}"
        # torch's first maximum (a tie in window (0, 0, 0, 0)), and its gradient where windows overlap
        one_hot = np.asarray(got["max_pool2d_indices"])
        assert set(np.unique(one_hot)) <= {0.0, 1.0}
        assert np.array_equal(_flat_positions(one_hot, 2, 1, x.shape[-1]), indices)
        overlap = 4  # a 3-window at stride 2 covers an input at most twice per axis
        assert np.abs(np.asarray(got["max_pool2d_backward"]) - gradient).max() <= overlap * ENC
    print(f"\nlargest errors ({parties} parties): {errors}")


@pytest.mark.slow
def test_attention_and_transformer_encoder_layer_match_torch_within_their_derived_bounds():
    """The layer tests' self-attention and TransformerEncoderLayer (tests/test_layers.py: its
    bounds propagate u from every encoding and truncation and each approximation's measured
    error) on authenticated shares: attention's products are batched matrix products."""
    from test_layers import _float_layer, _layers

    (secure,) = run_ok(run_transformer_layers, parties=2, timeout_s=600)[:1]
    for name in ("attention", "encoder"):
        values, limits = _float_layer(name, _layers()[name])
        labels = ["output", "input gradient", *(n for n, _ in _layers()[name].named_parameters())]
        for label, value, bound, measured in zip(labels, values, limits, secure[name], strict=True):
            error = (torch.tensor(measured, dtype=torch.float64) - value).abs()
            bound = bound.reshape(error.shape)
            assert (error <= bound).all(), f"{name} {label}: error exceeds its bound by {(error - bound).max():.2e}"
