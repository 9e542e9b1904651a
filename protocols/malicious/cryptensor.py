"""Authenticated shares as a CrypTen tensor type, so ``crypten.nn`` and its autograd (and
every model, loss and optimizer of ``mpc``) run on the SPDZ2k engine unchanged.

An :class:`AuthenticatedTensor` holds this party's :class:`~protocols.malicious.engine.AShare`
(value and MAC shares mod 2^128) and how many fractional bits its value carries: 16 (CrypTen's
fixed point) or 0 (the 0/1 and integer sharings comparisons return, which multiply without a
truncation, as CrypTen's scale-1 encoder does). Every arithmetic operation goes through the
session's :class:`~protocols.malicious.engine.Engine` (:func:`set_engine`); shape operations
(view, transpose, indexing, cat, ...) act on the four uint64 limbs alike, through torch.

* ``crypten.cryptensor(x, src=i)`` is the engine's authenticated input of party i.
* Products of two 16-bit values are truncated (the engine's checked truncation pairs); a
  public real factor is encoded to 16 bits, a public integer one is exact.
* ``div`` by a public integer ``d``: by a truncation of 2^k when d = 2^k (exact to 1 ulp),
  otherwise ``x round(2^k / d)`` truncated by 2^k with k = 16 + ceil(log2 d), a relative
  error of at most 2^-17 on top of the ulp.
* ``_ltz`` is the engine's authenticated comparison on ``COMPARISON_BITS`` bits: any |x| < 2^31
  (the range where CrypTen's own products stay in the ring), so no comparison the models,
  the sigmoid or Adam's binades make can fall outside it.
* ``get_plain_text`` is the engine's reveal: every value opened so far is MAC-checked first.

The released torch tensor types are not involved: nothing here returns a share in clear.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from protocols.crypten_hooks import load_crypten

load_crypten()  # crypten imported with its compatibility fixes (its ONNX registry moved in torch)
from crypten.cryptensor import CrypTensor  # noqa: E402
from crypten.encoder import FixedPointEncoder  # noqa: E402

from protocols.malicious import bilinear
from protocols.malicious.engine import FRACTIONAL_BITS, AShare, CheatDetected, Engine, encode
from protocols.malicious.ring import U128

TENSOR_TYPE = "authenticated"
COMPARISON_BITS = FRACTIONAL_BITS + 32  # |raw value| < 2^47
# max pooling's padding: below any value a model compares (|x| < 2^31 raw fixed point is the
# comparison's range; a difference with the padding must stay inside it)
POOL_PAD = -(2.0**20)

_engine: Engine | None = None


def set_engine(engine: Engine | None) -> None:
    """Install (or, with None, remove) the session's engine."""
    global _engine
    _engine = engine


def current_engine() -> Engine:
    if _engine is None:
        raise RuntimeError("no authenticated engine is running in this process: authenticated tensors "
                           "exist only inside a protocol=malicious session")
    return _engine


def _limbs(share: AShare) -> list[torch.Tensor]:
    return [torch.from_numpy(limb.view(np.int64)) for limb in (share.v.lo, share.v.hi, share.m.lo, share.m.hi)]


def _share(limbs: Sequence[torch.Tensor]) -> AShare:
    lo, hi, mlo, mhi = (limb.numpy().view(np.uint64) for limb in limbs)
    return AShare(U128(lo, hi), U128(mlo, mhi))


def _restructured(share: AShare, op: Callable[[torch.Tensor], Any]) -> AShare:
    return _share([op(limb) for limb in _limbs(share)])


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return torch.is_tensor(value) and not value.is_floating_point() and value.dtype != torch.bool


def _public(value: Any) -> np.ndarray:
    return value.detach().cpu().double().numpy() if torch.is_tensor(value) else np.asarray(value, np.float64)


# shape operations: the same torch operation on each limb
_STRUCTURAL = ("__getitem__", "view", "reshape", "t", "transpose", "permute", "squeeze", "unsqueeze", "expand",
               "flatten", "flip", "narrow", "index_select", "repeat", "roll", "unfold", "gather")


class UnsupportedOperation(TypeError):
    """An operation the authenticated tensor does not offer (the message names it); use a
    semi-honest suite for models that need it."""


@CrypTensor.register_cryptensor(TENSOR_TYPE)
class AuthenticatedTensor(CrypTensor):
    """A SPDZ2k-authenticated secret (see the module's docstring)."""

    def __init__(self, tensor: Any = None, src: int = 0, device: Any = None, requires_grad: bool | None = None,
                 precision: int | None = None) -> None:
        if requires_grad is None:
            requires_grad = bool(getattr(tensor, "requires_grad", False))
        super().__init__(requires_grad=requires_grad)
        self.fraction_bits = FRACTIONAL_BITS if precision is None else precision
        self._tensor: AShare | None = None
        if tensor is None or (isinstance(tensor, list) and not tensor):  # CrypTen's empty placeholder
            return
        _check_device(device)
        values = _public(tensor)
        engine = current_engine()
        scaled = values * 2.0 ** (self.fraction_bits - FRACTIONAL_BITS)
        self._tensor = engine.input(scaled if engine.rank == src else None, values.shape, src)

    # -- construction ------------------------------------------------------------------------
    def _new(self, share: AShare, fraction_bits: int | None = None) -> "AuthenticatedTensor":
        result = AuthenticatedTensor([])
        result._tensor = share
        result.fraction_bits = self.fraction_bits if fraction_bits is None else fraction_bits
        return result

    @staticmethod
    def from_shares(share: torch.Tensor, precision: int | None = None) -> "AuthenticatedTensor":
        """From this party's limbs as :attr:`share` gives them (value lo, hi, MAC lo, hi)."""
        result = AuthenticatedTensor([], precision=precision)
        result.share = share
        return result

    def shallow_copy(self) -> "AuthenticatedTensor":
        return self._new(self._tensor)

    def clone(self) -> "AuthenticatedTensor":
        return self._new(AShare(self._tensor.v.copy(), self._tensor.m.copy()))

    def copy_(self, other: "AuthenticatedTensor") -> "AuthenticatedTensor":
        if not isinstance(other, AuthenticatedTensor):
            raise TypeError(f"cannot copy a {type(other).__name__} into an authenticated tensor")
        self._tensor = AShare(other._tensor.v.copy(), other._tensor.m.copy())
        self.fraction_bits = other.fraction_bits
        return self

    @property
    def share(self) -> torch.Tensor:
        """This party's limbs, stacked: shape (4, *size), int64 (uint64 bit patterns)."""
        return torch.stack([limb.contiguous() for limb in _limbs(self._tensor)])

    @share.setter
    def share(self, value: torch.Tensor) -> None:
        if value.dim() < 1 or value.shape[0] != 4 or value.dtype != torch.int64:
            raise ValueError(f"an authenticated share is 4 int64 limbs (4, ...), not {value.dtype} {tuple(value.shape)}")
        self._tensor = _share([limb.cpu().contiguous().clone() for limb in value])

    @property
    def encoder(self) -> FixedPointEncoder:
        return FixedPointEncoder(precision_bits=self.fraction_bits)

    @encoder.setter
    def encoder(self, value: FixedPointEncoder) -> None:
        self.fraction_bits = int(round(math.log2(value.scale)))

    # -- where it lives ------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def is_cuda(self) -> bool:
        return False

    def to(self, *args: Any, **kwargs: Any) -> "AuthenticatedTensor":
        for arg in [*args, kwargs.get("device")]:
            if isinstance(arg, (str, torch.device)):
                _check_device(arg)
        return self

    def cpu(self) -> "AuthenticatedTensor":
        return self

    # -- sizes ---------------------------------------------------------------------------------------
    def size(self, dim: int | None = None) -> Any:
        shape = torch.Size(self._tensor.shape)
        return shape if dim is None else shape[dim]

    def dim(self) -> int:
        return len(self._tensor.shape)

    def nelement(self) -> int:
        return int(np.prod(self._tensor.shape, dtype=np.int64))

    numel = nelement

    def __len__(self) -> int:
        return self._tensor.shape[0]

    # -- shape operations ---------------------------------------------------------------------------
    def split(self, split_size: Any, dim: int = 0) -> tuple["AuthenticatedTensor", ...]:
        pieces = [limb.split(split_size, dim=dim) for limb in _limbs(self._tensor)]
        return tuple(self._new(_share(parts)) for parts in zip(*pieces))

    def unbind(self, dim: int = 0) -> tuple["AuthenticatedTensor", ...]:
        pieces = [limb.unbind(dim) for limb in _limbs(self._tensor)]
        return tuple(self._new(_share(parts)) for parts in zip(*pieces))

    def pad(self, pad: Sequence[int], mode: str = "constant", value: float = 0) -> "AuthenticatedTensor":
        if mode != "constant" or value != 0:
            raise UnsupportedOperation("authenticated tensors are padded with zeros only")
        return self._new(_restructured(self._tensor, lambda limb: torch.nn.functional.pad(limb, tuple(pad))))

    @staticmethod
    def cat(tensors: Sequence["AuthenticatedTensor"], dim: int = 0) -> "AuthenticatedTensor":
        return _joined(torch.cat, tensors, dim)

    @staticmethod
    def stack(tensors: Sequence["AuthenticatedTensor"], dim: int = 0) -> "AuthenticatedTensor":
        return _joined(torch.stack, tensors, dim)

    def sum(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> "AuthenticatedTensor":
        dims = range(self.dim()) if dim is None else ([dim] if isinstance(dim, int) else list(dim))
        axes = sorted({d % max(self.dim(), 1) for d in dims}, reverse=True)
        share = self._tensor
        for axis in axes:
            share = share.sum(axis, keepdims=keepdim)
        return self._new(share)

    # -- arithmetic ----------------------------------------------------------------------------------
    def _aligned(self, other: "AuthenticatedTensor") -> tuple[AShare, AShare, int]:
        """Both shares at the same number of fractional bits (an integer sharing is lifted)."""
        engine = current_engine()
        x, y = self._tensor, other._tensor
        bits = max(self.fraction_bits, other.fraction_bits)
        if self.fraction_bits < bits:
            x = engine.mul_int(x, 1 << (bits - self.fraction_bits))
        if other.fraction_bits < bits:
            y = engine.mul_int(y, 1 << (bits - other.fraction_bits))
        return x, y, bits

    def _encoded(self, value: Any) -> U128:
        """A public value in this tensor's fixed point."""
        scaled = np.round(_public(value) * 2.0 ** self.fraction_bits)
        return U128.from_int64(np.atleast_1d(scaled.astype(np.int64)))

    def add(self, other: Any) -> "AuthenticatedTensor":
        engine = current_engine()
        if isinstance(other, AuthenticatedTensor):
            x, y, bits = self._aligned(other)
            shape = np.broadcast_shapes(x.shape, y.shape)
            return self._new(_broadcast(x, shape) + _broadcast(y, shape), bits)
        if isinstance(other, CrypTensor):
            raise TypeError(f"cannot add a {type(other).__name__} to an authenticated tensor")
        return self._new(_fit(engine.add_public(self._tensor, self._encoded(other)), self, other))

    def neg(self) -> "AuthenticatedTensor":
        return self._new(-self._tensor)

    def mul(self, other: Any) -> "AuthenticatedTensor":
        engine = current_engine()
        if isinstance(other, AuthenticatedTensor):
            shape = tuple(np.broadcast_shapes(self._tensor.shape, other._tensor.shape))
            x, y = _broadcast(self._tensor, shape), _broadcast(other._tensor, shape)
            both = self.fraction_bits + other.fraction_bits
            product = engine.mul(x, y, truncate=both > FRACTIONAL_BITS)
            return self._new(product, min(both, FRACTIONAL_BITS))
        if isinstance(other, CrypTensor):
            raise TypeError(f"cannot multiply an authenticated tensor by a {type(other).__name__}")
        if _is_integer(other):
            factor = U128.from_int64(np.atleast_1d(np.asarray(_public(other), np.int64)))
            return self._new(_fit(engine.mul_public(self._tensor, factor), self, other))
        product = engine.mul_public(self._tensor, U128.from_int64(np.atleast_1d(encode(_public(other)))))
        product = _fit(product, self, other)
        if self.fraction_bits == FRACTIONAL_BITS:
            return self._new(engine.trunc(product))
        return self._new(product, FRACTIONAL_BITS)

    def div(self, other: Any) -> "AuthenticatedTensor":
        if isinstance(other, CrypTensor):
            raise UnsupportedOperation("division by a secret is not available on authenticated tensors")
        if isinstance(other, (int, float)) and float(other).is_integer() and other > 0:
            return self._divide(int(other))
        return self.mul(1.0 / _public(other) if torch.is_tensor(other) else 1.0 / other)

    def _divide(self, divisor: int) -> "AuthenticatedTensor":
        engine = current_engine()
        if divisor == 1:
            return self.clone()
        if divisor & (divisor - 1) == 0:
            return self._new(engine.trunc(self._tensor, divisor.bit_length() - 1))
        bits = FRACTIONAL_BITS + math.ceil(math.log2(divisor))
        scaled = engine.mul_int(self._tensor, round(2**bits / divisor))
        return self._new(engine.trunc(scaled, bits))

    def matmul(self, other: Any) -> "AuthenticatedTensor":
        """torch's matmul: matrices, vectors, and batches of matrices (broadcast leading
        dimensions; a batch times a matrix is one matrix product)."""
        if not isinstance(other, AuthenticatedTensor):
            raise UnsupportedOperation("authenticated tensors multiply matrices with other authenticated tensors only")
        if self.dim() == 1:
            return self.unsqueeze(0).matmul(other).squeeze(-2)
        if other.dim() == 1:
            return self.matmul(other.unsqueeze(-1)).squeeze(-1)
        if other.dim() == 2 and self.dim() > 2:  # rows of every batch element times one matrix
            rows = self.reshape(-1, self.size(-1)).matmul(other)
            return rows.reshape(*self.size()[:-1], other.size(-1))
        (n, d), (d2, m) = self.size()[-2:], other.size()[-2:]
        if d != d2:
            raise ValueError(f"matmul shapes {tuple(self.size())} and {tuple(other.size())} do not match")
        # numpy's rule, not torch.broadcast_shapes: that one imports sympy (seconds) on first use
        batch = tuple(np.broadcast_shapes(tuple(self.size()[:-2]), tuple(other.size()[:-2])))
        count = int(np.prod(batch, dtype=np.int64))
        x = self.expand(*batch, n, d).reshape(count, n, d)
        y = other.expand(*batch, d, m).reshape(count, d, m)
        spec = ["matmul", n, d, m] if not batch else ["bmatmul", count, n, d, m]
        x_share, y_share = (x._tensor.reshape(n, d), y._tensor.reshape(d, m)) if not batch else (x._tensor, y._tensor)
        return self._bilinear(other, spec, x_share, y_share).reshape(*batch, n, m)

    def _bilinear(self, other: "AuthenticatedTensor", spec: list, x: AShare, y: AShare) -> "AuthenticatedTensor":
        """f(x, y) for a triple kind's map f (``protocols.malicious.bilinear``), truncated
        when both factors carry fractional bits."""
        both = self.fraction_bits + other.fraction_bits
        product = current_engine().bilinear(spec, x, y, truncate=both > FRACTIONAL_BITS)
        return self._new(product, min(both, FRACTIONAL_BITS))

    # -- convolutions and pooling ---------------------------------------------------------------------
    def conv2d(self, kernel: Any, bias: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
               groups: int = 1) -> "AuthenticatedTensor":
        """torch's conv2d of an (N, C, H, W) input: with a shared kernel by a convolution
        triple, with a public one locally (an integer kernel exactly, a real one encoded
        and truncated)."""
        if self.dim() != 4:
            raise ValueError(f"conv2d takes an (N, C, H, W) input, not {tuple(self.size())}")
        kernel_shape = tuple(kernel.size())
        spec = ["conv", list(self.size()), list(kernel_shape), _pair(stride), _pair(padding), _pair(dilation),
                int(groups)]
        if isinstance(kernel, AuthenticatedTensor):
            result = self._bilinear(kernel, spec, self._tensor, kernel._tensor)
        elif isinstance(kernel, CrypTensor):
            raise TypeError(f"cannot convolve an authenticated tensor with a {type(kernel).__name__}")
        else:
            result = self._public_bilinear(spec, kernel)
        return result if bias is None else result + bias.reshape(-1, 1, 1)

    def _public_bilinear(self, spec: list, public: Any) -> "AuthenticatedTensor":
        """f(x, public) for a bilinear map f, locally: f is linear in x."""
        engine = current_engine()
        integer = _is_integer(public) or bool(torch.all(torch.as_tensor(public) == torch.round(torch.as_tensor(public))))
        values = np.asarray(_public(public), np.float64)
        factor = U128.from_int64(values.astype(np.int64) if integer else encode(values))
        f = bilinear.product(spec)
        share = AShare(f(self._tensor.v, factor), f(self._tensor.m, factor))
        if integer:
            return self._new(share)
        if self.fraction_bits == FRACTIONAL_BITS:
            return self._new(engine.trunc(share))
        return self._new(share, FRACTIONAL_BITS)

    def conv1d(self, kernel: Any, bias: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
               groups: int = 1) -> "AuthenticatedTensor":
        """conv1d as a conv2d of height 1."""
        result = self.unsqueeze(2).conv2d(kernel.unsqueeze(2), None, (1, _single(stride)), (0, _single(padding)),
                                          (1, _single(dilation)), groups).squeeze(2)
        return result if bias is None else result + bias.reshape(-1, 1)

    def conv_transpose2d(self, kernel: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
                         output_padding: Any = 0, groups: int = 1, dilation: Any = 1) -> "AuthenticatedTensor":
        """torch's conv_transpose2d (the input gradient of conv2d), as the conv2d of the input
        spread out by the stride (zeros between its elements, the borders padded or cropped)
        with the kernel's channels swapped per group and its taps flipped."""
        stride, padding, output_padding, dilation = (_pair(v) for v in (stride, padding, output_padding, dilation))
        in_channels, per_group, kh, kw = kernel.size()
        reach = (dilation[0] * (kh - 1) - padding[0], dilation[1] * (kw - 1) - padding[1])
        borders = (reach[1], reach[1] + output_padding[1], reach[0], reach[0] + output_padding[0])
        spread = self._new(_restructured(self._tensor, lambda limb: _spread(limb, stride, borders)))
        swapped = kernel.reshape(groups, in_channels // groups, per_group, kh, kw).transpose(1, 2)
        flipped = swapped.reshape(groups * per_group, in_channels // groups, kh, kw).flip((2, 3))
        result = spread.conv2d(flipped, None, 1, 0, dilation, groups)
        return result if bias is None else result + bias.reshape(-1, 1, 1)

    def conv_transpose1d(self, kernel: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
                         output_padding: Any = 0, groups: int = 1, dilation: Any = 1) -> "AuthenticatedTensor":
        """conv_transpose1d as a conv_transpose2d of height 1."""
        result = self.unsqueeze(2).conv_transpose2d(
            kernel.unsqueeze(2), None, (1, _single(stride)), (0, _single(padding)), (0, _single(output_padding)),
            groups, (1, _single(dilation))).squeeze(2)
        return result if bias is None else result + bias.reshape(-1, 1)

    def avg_pool2d(self, kernel_size: Any, stride: Any = None, padding: Any = 0,
                   ceil_mode: bool = False) -> "AuthenticatedTensor":
        """Each window's sum (a convolution with a public kernel of ones, per channel: exact)
        divided by the window's size, padding counted as torch's default does."""
        if ceil_mode:
            raise UnsupportedOperation("avg_pool2d with ceil_mode=True is not available (nor in CrypTen)")
        kh, kw = _pair(kernel_size)
        channels = self.size(1)
        ones = torch.ones(channels, 1, kh, kw, dtype=torch.int64)
        sums = self.conv2d(ones, None, _pair(kernel_size if stride is None else stride), padding, 1, channels)
        return sums.div(kh * kw)

    def max_pool2d(self, kernel_size: Any, padding: Any = 0, stride: Any = None, dilation: Any = 1,
                   ceil_mode: bool = False, return_indices: bool = False) -> Any:
        """Each window's maximum by a tree of comparisons, and (``return_indices``) its
        position as a 0/1 sharing of shape (N, C, H', W', kh, kw): the first maximum, as
        torch's. Padding never wins (it holds a value far below any input's)."""
        windows, output_shape = self._pool_windows(kernel_size, padding, stride, dilation, ceil_mode)
        largest, one_hot = _max_with_one_hot(windows)
        largest = largest.reshape(*output_shape)
        if not return_indices:
            return largest
        return largest, one_hot.reshape(*output_shape, *_pair(kernel_size))

    def _pool_windows(self, kernel_size: Any, padding: Any, stride: Any, dilation: Any,
                      ceil_mode: bool) -> tuple["AuthenticatedTensor", tuple[int, ...]]:
        """The pooling windows, (N, C, H', W', kh * kw), of the input padded with POOL_PAD."""
        geometry = _PoolGeometry(tuple(self.size()), kernel_size, padding, stride, dilation, ceil_mode)
        engine = current_engine()
        padded = _restructured(self._tensor, lambda limb: torch.nn.functional.pad(limb, geometry.borders))
        pad_mask = torch.nn.functional.pad(torch.zeros(self.size()[-2:]), geometry.borders, value=1.0)
        filled = engine.add_public(padded, self._encoded(pad_mask.numpy() * POOL_PAD))
        windows = _restructured(filled, geometry.windows)
        return self._new(windows), geometry.output_shape

    def _max_pool2d_backward(self, indices: "AuthenticatedTensor", kernel_size: Any, padding: Any = None,
                             stride: Any = None, dilation: Any = 1, ceil_mode: bool = False,
                             output_size: Any = None) -> "AuthenticatedTensor":
        """max_pool2d's input gradient: each output's gradient at its window's maximum, the
        windows' contributions summed where they overlap (padding cropped)."""
        geometry = _PoolGeometry(tuple(output_size), kernel_size, padding or 0, stride, dilation, ceil_mode)
        kh, kw = _pair(kernel_size)
        placed = self.reshape(*self.size(), 1, 1) * indices  # (N, C, H', W', kh, kw)
        total = None
        for a in range(kh):
            for b in range(kw):
                term = _restructured(placed[:, :, :, :, a, b]._tensor, lambda limb: geometry.place(limb, a, b))
                total = term if total is None else total + term
        top, bottom, left, right = geometry.borders[2], geometry.borders[3], geometry.borders[0], geometry.borders[1]
        height, width = total.shape[2], total.shape[3]
        return placed._new(total[:, :, top:height - bottom, left:width - right], self.fraction_bits)

    def _ltz(self) -> "AuthenticatedTensor":
        return self._new(current_engine().ltz(self._tensor, COMPARISON_BITS), 0)

    # -- output --------------------------------------------------------------------------------------
    def get_plain_text(self, dst: int | None = None) -> torch.Tensor | None:
        """The value (to every party, or to party ``dst`` only: None at the others), after
        the MAC check of everything opened so far."""
        engine = current_engine()
        share = self._tensor
        if self.fraction_bits != FRACTIONAL_BITS:
            share = engine.mul_int(share, 1 << (FRACTIONAL_BITS - self.fraction_bits))
        plain = engine.reveal(share, to=dst)
        return None if plain is None else torch.from_numpy(plain).reshape(self.size()).to(torch.get_default_dtype())

    @staticmethod
    @contextmanager
    def planned(key: Any) -> Iterator[None]:
        """A block whose tuple needs repeat each time ``key`` recurs (a training step): its
        tuples come in one dealer request made ahead (``Engine.planned``), and the openings
        pending a MAC check are checked once there are enough of them."""
        engine = current_engine()
        with engine.planned(key):
            yield
        engine.maybe_check()

    @staticmethod
    def verify(tensors: Sequence["AuthenticatedTensor"], suspect: str | None = None) -> None:
        """MAC-check kept shares without revealing them (``Engine.verify``); a failure blames
        ``suspect`` where given."""
        current_engine().verify(*[t._tensor for t in tensors], suspect=suspect)

    @staticmethod
    def mac_key_share() -> torch.Tensor:
        """This party's share of the session's MAC key (2 int64 limbs), which a checkpoint of
        its shares must carry: their MACs hold only under that key."""
        return current_engine().key_share

    @staticmethod
    def private_sum(own: torch.Tensor) -> "AuthenticatedTensor":
        """The secret sum of every party's own ``own`` (the same shape at every party): each
        party's value enters as its authenticated input, one input round per party, since
        a value added to a share without its MAC would fail the next check."""
        engine = current_engine()
        total = None
        for party in range(engine.parties):
            value = AuthenticatedTensor(own if party == engine.rank else torch.zeros_like(own), src=party)
            total = value if total is None else total + value
        return total

    @staticmethod
    def agree(what: str, data: bytes) -> None:
        """Every party must hold the same public ``data`` (what the parties settled in the
        clear, outside the engine: the schema, the scaling statistics, the row counts). Its
        digest goes through the engine's recorded exchange and a MAC check follows, so a party
        telling its peers different things stops every party there; a party holding other
        data than the rest stops every party that sees it."""
        engine = current_engine()
        digest = np.frombuffer(hashlib.sha256(data).digest(), np.int64).tolist()
        views = engine.exchange_public(digest)
        engine.check()
        differ = [rank for rank, view in sorted(views.items()) if view != digest]
        if differ:
            raise CheatDetected("public agreement", f"party {differ[0]} holds a different {what}", differ[0])

    def __repr__(self) -> str:
        shape = "empty" if self._tensor is None else tuple(self._tensor.shape)
        return f"AuthenticatedTensor(shape={shape}, fraction_bits={self.fraction_bits}, value=HIDDEN)"


def _structural_method(name: str) -> Callable[..., AuthenticatedTensor]:
    def method(self: AuthenticatedTensor, *args: Any, **kwargs: Any) -> AuthenticatedTensor:
        return self._new(_restructured(self._tensor, lambda limb: getattr(limb, name)(*args, **kwargs)))

    method.__name__ = name
    return method


for _name in _STRUCTURAL:
    setattr(AuthenticatedTensor, _name, _structural_method(_name))


def _joined(join: Callable, tensors: Sequence[AuthenticatedTensor], dim: int) -> AuthenticatedTensor:
    tensors = list(tensors)
    bits = max(t.fraction_bits for t in tensors)
    engine = current_engine()
    shares = [t._tensor if t.fraction_bits == bits else engine.mul_int(t._tensor, 1 << (bits - t.fraction_bits))
              for t in tensors]
    limbs = [_limbs(share) for share in shares]
    return tensors[0]._new(_share([join([parts[i] for parts in limbs], dim) for i in range(4)]), bits)


def _broadcast(share: AShare, shape: Sequence[int]) -> AShare:
    if tuple(share.shape) == tuple(shape):
        return share
    return AShare(share.v.broadcast_to(shape), share.m.broadcast_to(shape))


def _fit(share: AShare, tensor: AuthenticatedTensor, public: Any) -> AShare:
    """The result of an operation with a public value has the broadcast shape of both
    (a 0-dimensional public value must not turn a 0-dimensional tensor into shape (1,))."""
    shape = tuple(np.broadcast_shapes(tensor._tensor.shape, np.shape(_public(public))))
    return share if tuple(share.shape) == shape else share.reshape(*shape)


def _check_device(device: Any) -> None:
    if device is not None and torch.device(device).type != "cpu":
        raise ValueError(f"protocol=malicious computes on the CPU only, not on {device}")


def _pair(value: Any) -> list[int]:
    """A convolution's or pooling's int-or-pair argument as two ints."""
    values = [value, value] if isinstance(value, int) else list(value)
    if len(values) == 1:
        values = values * 2
    return [int(v) for v in values]


def _single(value: Any) -> int:
    """A conv1d argument (an int or a 1-tuple) as an int."""
    return int(value) if isinstance(value, int) else int(value[0])


def _spread(limb: torch.Tensor, stride: Sequence[int], borders: Sequence[int]) -> torch.Tensor:
    """(N, C, H, W) with stride - 1 zeros between neighbours along H and W, then the borders
    (left, right, top, bottom) padded with zeros, or cropped where negative."""
    n, channels, height, width = limb.shape
    out = limb.new_zeros(n, channels, (height - 1) * stride[0] + 1, (width - 1) * stride[1] + 1)
    out[:, :, ::stride[0], ::stride[1]] = limb
    return torch.nn.functional.pad(out, tuple(borders))


class _PoolGeometry:
    """Where the windows of a 2-d pooling lie in its padded (N, C, H, W) input (torch's
    output size rule, ceil_mode included)."""

    def __init__(self, input_shape: tuple[int, ...], kernel_size: Any, padding: Any, stride: Any, dilation: Any,
                 ceil_mode: bool) -> None:
        self.n, self.channels, height, width = input_shape
        self.kernel = _pair(kernel_size)
        self.stride = _pair(kernel_size if stride is None else stride)
        self.dilation = _pair(dilation)
        pad = _pair(padding)
        self.out, ends = [], []
        for size, k, s, p, d in zip((height, width), self.kernel, self.stride, pad, self.dilation):
            span = d * (k - 1) + 1
            count = (size + 2 * p - span + (s - 1 if ceil_mode else 0)) // s + 1
            if ceil_mode and (count - 1) * s >= size + p:
                count -= 1
            self.out.append(count)
            ends.append(max(p, (count - 1) * s + span - p - size))
        self.borders = (pad[1], ends[1], pad[0], ends[0])  # left, right, top, bottom
        self.padded = (height + pad[0] + ends[0], width + pad[1] + ends[1])
        self.output_shape = (self.n, self.channels, *self.out)

    def windows(self, limb: torch.Tensor) -> torch.Tensor:
        """(N, C, H', W', kh * kw) from the padded input."""
        spans = [d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation)]
        patches = limb.unfold(2, spans[0], self.stride[0]).unfold(3, spans[1], self.stride[1])
        patches = patches[:, :, :self.out[0], :self.out[1], ::self.dilation[0], ::self.dilation[1]]
        return patches.reshape(*self.output_shape, -1)

    def place(self, limb: torch.Tensor, a: int, b: int) -> torch.Tensor:
        """Every window's tap (a, b), from (N, C, H', W'), at its place in the padded input."""
        out = limb.new_zeros(self.n, self.channels, *self.padded)
        top, left = a * self.dilation[0], b * self.dilation[1]
        out[:, :, top:top + self.stride[0] * (self.out[0] - 1) + 1:self.stride[0],
            left:left + self.stride[1] * (self.out[1] - 1) + 1:self.stride[1]] = limb
        return out


def _constant(values: np.ndarray) -> AuthenticatedTensor:
    """Public integers as an integer (0 fractional bits) authenticated sharing, locally."""
    engine = current_engine()
    values = np.asarray(values, np.int64)
    result = AuthenticatedTensor([])
    result._tensor = engine.add_public(engine.zeros(values.shape), U128.from_int64(values))
    result.fraction_bits = 0
    return result


def _max_with_one_hot(x: AuthenticatedTensor) -> tuple[AuthenticatedTensor, AuthenticatedTensor]:
    """The maximum over the last dimension and its first position as a 0/1 sharing, by a
    tree of pairwise comparisons (a later element wins only if strictly larger)."""
    count = x.size(-1)
    values = x
    one_hot = _constant(np.broadcast_to(np.eye(count, dtype=np.int64), (*x.size(), count)))
    while values.size(-1) > 1:
        pairs = values.size(-1) // 2
        first, second = values[..., 0:2 * pairs:2], values[..., 1:2 * pairs:2]
        first_hot, second_hot = one_hot[..., 0:2 * pairs:2, :], one_hot[..., 1:2 * pairs:2, :]
        later = (first - second)._ltz()  # [second > first]
        larger = first + later * (second - first)
        hot = first_hot + later.unsqueeze(-1) * (second_hot - first_hot)
        if values.size(-1) % 2:
            larger = AuthenticatedTensor.cat([larger, values[..., -1:]], dim=-1)
            hot = AuthenticatedTensor.cat([hot, one_hot[..., -1:, :]], dim=-2)
        values, one_hot = larger, hot
    return values.squeeze(-1), one_hot.squeeze(-2)
