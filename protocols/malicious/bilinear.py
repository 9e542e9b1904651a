"""The bilinear maps the dealer makes authenticated triples for, on Z_2^128.

A triple for a bilinear map f is (A, B, C = f(A, B)); the parties multiply secrets x and y
with it by opening D = x - A and E = y - B: f(x, y) = C + f(D, B) + f(A, E) + f(D, E).
Its check (``Engine._check_tuples``) is the same sacrifice for every f, since f is linear
in each argument: with a companion (A', C' = f(A', B)) and a public t drawn after dealing,
t C - C' - f(t A - A', B) = 0. The kinds and their specs (all integers, so they travel
in the dealer's msgpack header):

* ``triple``  (shape):                         elementwise product;
* ``matmul``  (n, d, m):                       (n, d) @ (d, m);
* ``bmatmul`` (batch, n, d, m):                (batch, n, d) @ (batch, d, m), one product
                                               per batch element (attention's heads);
* ``conv``    (x shape, w shape, stride, padding, dilation, groups): torch's conv2d without
                                               bias, x (N, C, H, W), w (O, C / groups, kh, kw)
                                               (a conv1d is one of height 1).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from protocols.malicious import ring
from protocols.malicious.ring import U128

KINDS = ("triple", "matmul", "bmatmul", "conv")

Shape = tuple[int, ...]


class SpecError(ValueError):
    """A bilinear tuple spec that is malformed or describes no valid product."""


def _ints(values: Any, count: int, what: str, spec: Sequence[Any], least: int = 0) -> tuple[int, ...]:
    if not isinstance(values, (list, tuple)) or len(values) != count or \
            not all(isinstance(v, int) and not isinstance(v, bool) and v >= least for v in values):
        raise SpecError(f"{what} of {list(spec)!r} must be {count} integers >= {least}")
    return tuple(values)


def conv_output(spec: Sequence[Any]) -> Shape:
    """The output shape (N, O, H', W') of a ``conv`` spec (validating it)."""
    if len(spec) != 7:
        raise SpecError(f"a conv spec is (x shape, w shape, stride, padding, dilation, groups), not {list(spec)!r}")
    (n, channels, height, width) = _ints(spec[1], 4, "the input shape", spec)
    (out_channels, per_group, kh, kw) = _ints(spec[2], 4, "the kernel shape", spec, least=1)
    stride, padding, dilation = (_ints(spec[i], 2, name, spec, least=least)
                                 for i, name, least in ((3, "the stride", 1), (4, "the padding", 0), (5, "the dilation", 1)))
    groups = spec[6]
    if not isinstance(groups, int) or groups < 1 or channels != per_group * groups or out_channels % groups:
        raise SpecError(f"groups of {list(spec)!r} must divide the output channels and give the input's channels")
    out_h = (height + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (width + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if out_h < 1 or out_w < 1:
        raise SpecError(f"the kernel of {list(spec)!r} does not fit the padded input")
    return (n, out_channels, out_h, out_w)


def shapes(spec: Sequence[Any]) -> tuple[Shape, Shape, Shape]:
    """The shapes of A, B and C for ``spec``."""
    kind = spec[0]
    if kind == "triple":
        shape = spec[1] if len(spec) == 2 and isinstance(spec[1], (list, tuple)) else None
        if shape is None:
            raise SpecError(f"a triple spec is (shape,), not {list(spec)!r}")
        shape = _ints(shape, len(shape), "the shape", spec)
        return shape, shape, shape
    if kind == "matmul":
        n, d, m = _ints(list(spec[1:]), 3, "the sizes", spec)
        return (n, d), (d, m), (n, m)
    if kind == "bmatmul":
        batch, n, d, m = _ints(list(spec[1:]), 4, "the sizes", spec)
        return (batch, n, d), (batch, d, m), (batch, n, m)
    if kind == "conv":
        output = conv_output(spec)
        return tuple(spec[1]), tuple(spec[2]), output
    raise SpecError(f"{kind!r} is not a bilinear tuple kind")


def product(spec: Sequence[Any]) -> Callable[[U128, U128], U128]:
    """The map f of ``spec`` on ring elements."""
    kind = spec[0]
    if kind == "triple":
        return ring.mul
    if kind in ("matmul", "bmatmul"):
        return ring.matmul
    if kind == "conv":
        stride, padding, dilation, groups = spec[3], spec[4], spec[5], spec[6]
        return lambda x, w: ring.conv2d(x, w, stride, padding, dilation, groups)
    raise SpecError(f"{kind!r} is not a bilinear tuple kind")

