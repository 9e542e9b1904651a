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

from protocols.malicious.engine import FRACTIONAL_BITS, AShare, CheatDetected, Engine, encode
from protocols.malicious.ring import U128

TENSOR_TYPE = "authenticated"
COMPARISON_BITS = FRACTIONAL_BITS + 32  # |raw value| < 2^47

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
        if not isinstance(other, AuthenticatedTensor):
            raise UnsupportedOperation("authenticated tensors multiply matrices with other authenticated tensors only")
        if self.dim() == 1:
            return self.unsqueeze(0).matmul(other).squeeze(-2)
        if other.dim() == 1:
            return self.matmul(other.unsqueeze(-1)).squeeze(-1)
        if self.dim() != 2 or other.dim() != 2:
            raise UnsupportedOperation(f"authenticated matmul takes matrices, not {tuple(self.size())} "
                                      f"by {tuple(other.size())}")
        both = self.fraction_bits + other.fraction_bits
        product = current_engine().matmul(self._tensor, other._tensor, truncate=both > FRACTIONAL_BITS)
        return self._new(product, min(both, FRACTIONAL_BITS))

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
    def verify(tensors: Sequence["AuthenticatedTensor"]) -> None:
        """MAC-check kept shares without revealing them (``Engine.verify``)."""
        current_engine().verify(*[t._tensor for t in tensors])

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
