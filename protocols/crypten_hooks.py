"""The one module that changes CrypTen's internals: compatibility fixes, the session's swaps,
the model converter's swap, and every extension point the protocol parts plug into.

* **Compatibility** (crypten 0.4.1 on torch 2.9-2.13, applied once by :func:`load_crypten`,
  before crypten's own import-time code runs): the moved ONNX registration module, the
  TorchScript exporter for ``from_pytorch``, ONNX ``Identity`` nodes, pooling windows,
  ``torch.load``'s ``weights_only`` default, and ``FixedPointEncoder.decode``.
* **The session** (:func:`install_session`): ``crypten.communicator.DistributedCommunicator``
  (looked up at call time) becomes an adapter whose instance is the party's transport,
  ``crypten.cfg`` reads through a cache, and ``CrypTensor.__getattribute__`` reads plain
  attributes without CrypTen's dispatch.
* **Models** (:func:`drop_unit_scalings`): converted ``Gemm`` layers with unit scalings
  become a plain ``a @ b + c``.
* **Protocol parts**: the provider table in ``crypten.mpc`` (chosen by ``cfg.mpc.provider``)
  for triple sources; ``cfg.mpc.protocol``, looked up in
  ``crypten.mpc.primitives.arithmetic``'s globals, for the metered Beaver functions; the
  hard-wired ``beaver.AND`` (binary AND), ``beaver.B2A_single_bit`` (B2A),
  ``MPCTensor._ltz`` and ``converters._A2B`` (comparison and A2B), ``MPCTensor.relu`` and
  the autograd ReLU's forward and backward,
  ``ArithmeticSharedTensor.div_`` and ``beaver.truncate`` (truncation); and randomness:
  ``crypten._setup_prng``, ``crypten.generators`` and the samplers of ``crypten.common.rng``
  wherever a module imported them by name.

Everything but the compatibility fixes is undone on uninstall. No other module assigns to
anything of CrypTen's.
"""

from __future__ import annotations

import functools
import importlib
import io
import math
import sys
import types
from typing import Any, Callable

import torch

from protocols.parts import PartCounters, metered
from protocols.share_tensors import plain, wrapped_like

_PROVIDER_TABLE = "__SUPPORTED_PROVIDERS"
_PROTOCOL_NAME = "cotrain_beaver"
_BEAVER_OPS = ("mul", "matmul", "conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d", "square")
_RNG_FUNCTIONS = ("generate_random_ring_element", "generate_kbit_random_tensor")
_RNG_USERS = (
    "crypten.common.rng",
    "crypten.mpc.primitives.arithmetic",
    "crypten.mpc.primitives.binary",
    "crypten.mpc.provider.tfp_provider",
    "crypten.mpc.provider.ttp_provider",
)

# owner -> [(object, attribute, previous value)], undone in reverse order
_PATCHES: dict[str, list[tuple[Any, str, Any]]] = {}
_MISSING = object()


def _patch(owner: str, target: Any, name: str, value: Any) -> None:
    if isinstance(target, dict):
        previous = target.get(name, _MISSING)
        target[name] = value
    else:
        previous = vars(target).get(name, _MISSING) if isinstance(target, type) else getattr(target, name, _MISSING)
        setattr(target, name, value)
    _PATCHES.setdefault(owner, []).append((target, name, previous))


def restore(owner: str) -> None:
    """Undo every patch ``owner`` made."""
    for target, name, previous in reversed(_PATCHES.pop(owner, [])):
        if isinstance(target, dict):
            target.pop(name, None) if previous is _MISSING else target.__setitem__(name, previous)
        elif previous is _MISSING:
            delattr(target, name)
        else:
            setattr(target, name, previous)


# -- compatibility with current torch, and crypten's bugs -----------------------------------
_ONNX_REGISTRATION = "torch.onnx._internal.registration"
_ONNX_REGISTRATION_NOW = "torch.onnx._internal.torchscript_exporter.registration"
_applied = False


def _alias_moved_onnx_registration() -> None:
    """crypten imports the TorchScript ONNX registry from its pre-2.9 location."""
    try:
        importlib.import_module(_ONNX_REGISTRATION)
    except ModuleNotFoundError:
        sys.modules[_ONNX_REGISTRATION] = importlib.import_module(_ONNX_REGISTRATION_NOW)


def decode_fixed_point(tensor: torch.Tensor, scale: int) -> torch.Tensor:
    """Exact fixed-point decode: floor quotient plus the non-negative remainder.

    crypten divides negatives by ``scale - 1``, which is off by one for some values and
    drifts for large ones. Quotient and remainder are exact integers; they are combined in
    float64 (the quotient of an int64 by 2^16 fits its 53-bit mantissa up to 2^53) and
    rounded once to the default float dtype.
    """
    quotient = tensor.div(scale, rounding_mode="floor")
    remainder = tensor - quotient * scale
    exact = quotient.double() + remainder.double() / scale
    return exact.to(torch.get_default_dtype())


def _fix_fixed_point_decode(crypten_module: Any) -> None:
    encoder_cls = crypten_module.encoder.FixedPointEncoder

    def decode(self, tensor):
        if tensor is None:
            return None
        tensor = plain(tensor)  # a revealed CUDA share comes in CrypTen's wrapper
        if self._scale > 1:
            return decode_fixed_point(tensor, self._scale)
        return tensor

    encoder_cls.decode = decode


def _use_torchscript_onnx_exporter(crypten_module: Any) -> None:
    """torch >= 2.9 exports with dynamo by default; crypten's converter needs TorchScript."""
    converter = crypten_module.nn.onnx_converter
    original_kwargs = dict(
        do_constant_folding=False,
        export_params=True,
        input_names=["input"],
        output_names=["output"],
        opset_version=converter._OPSET_VERSION,
    )

    def export(f: io.BytesIO, pytorch_model: torch.nn.Module, dummy_input: Any) -> io.BytesIO:
        torch.onnx.export(pytorch_model, dummy_input, f, dynamo=False, **original_kwargs)
        return f

    converter._export_pytorch_model = export


def _allow_crypten_types_in_torch_load() -> None:
    """torch >= 2.6 loads with ``weights_only=True``, which rejects crypten's own classes.

    Rather than fall back to the full unpickler, the classes crypten saves (shared tensors,
    their encoder and ptype, the tuple-cache containers) are allow-listed, so crypten.load
    and the provider's tuple cache keep torch's restricted loader. A module's state dict
    holds its encrypted parameters as clones, which record ``AutogradClone`` as the
    function that made them.
    """
    import collections

    from crypten.encoder import FixedPointEncoder
    from crypten.gradients import AutogradClone, AutogradContext
    from crypten.mpc.mpc import MPCTensor
    from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor
    from crypten.mpc.primitives.binary import BinarySharedTensor
    from crypten.mpc.ptype import ptype

    torch.serialization.add_safe_globals(
        [
            MPCTensor,
            ArithmeticSharedTensor,
            BinarySharedTensor,
            FixedPointEncoder,
            AutogradContext,
            AutogradClone,
            ptype,
            collections.defaultdict,
            frozenset,
            torch.Size,
        ]
    )


def _convert_onnx_identity(crypten_module: Any) -> None:
    """Newer TorchScript exporters emit ONNX ``Identity`` nodes (e.g. for a parameter a
    graph uses twice); crypten's converter has no module for them."""
    module = crypten_module.nn.module

    class Identity(module.Module):
        """Passes its input through unchanged (ONNX ``Identity``)."""

        def forward(self, input: Any) -> Any:
            return input

        @staticmethod
        def from_onnx(attributes: Any = None) -> "Identity":
            return Identity()

    crypten_module.nn.onnx_converter.ONNX_TO_CRYPTEN.setdefault("Identity", Identity)


def _convert_with(crypten_module: Any, op: str, base: type, convert: Callable[[type, dict], Any]) -> None:
    """ONNX ``op`` converts through ``convert(base, attributes)`` from now on (once: the
    replacement is marked, so applying again keeps it)."""
    table = crypten_module.nn.onnx_converter.ONNX_TO_CRYPTEN
    if getattr(table.get(op), "converted_by_cotrain", False):
        return

    class Converted(base):  # type: ignore[misc, valid-type]
        converted_by_cotrain = True

        @staticmethod
        def from_onnx(attributes: Any = None) -> Any:
            return convert(base, attributes or {})

    table[op] = Converted


def _reduce_over_one_axis(crypten_module: Any) -> None:
    """ONNX ``ReduceMean``/``ReduceSum`` give their axes as a list; crypten's mean and sum
    backward passes index the input's size with it and fail. One axis is given as an int."""

    def one_axis(base: type, attributes: dict) -> Any:
        module = base.from_onnx(attributes)
        if isinstance(module.dim, (list, tuple)) and len(module.dim) == 1:
            module.dim = int(module.dim[0])
        return module

    for op, base in (("ReduceMean", crypten_module.nn.Mean), ("ReduceSum", crypten_module.nn.Sum)):
        _convert_with(crypten_module, op, base, one_axis)


def _pool_windows_as_exported(crypten_module: Any) -> None:
    """crypten's pooling converter keeps only the first kernel size, stride and pad, so a (2, 1)
    window became 2 x 2 and a model came out silently wrong. The window and stride are kept
    whole; what crypten's pooling cannot do (uneven padding, dilation, padding left out of an
    average) is refused, naming the layer's settings."""
    for op, base in (("MaxPool", crypten_module.nn.MaxPool2d), ("AveragePool", crypten_module.nn.AvgPool2d)):
        _convert_with(crypten_module, op, base,
                      lambda pool, attributes, op=op: pool(*_pool_arguments(op, attributes)))


def _pool_arguments(op: str, attributes: dict) -> tuple:
    """(kernel, stride, padding, ceil_mode) for crypten's 2-D pooling from ONNX attributes."""
    kernel = tuple(int(k) for k in attributes["kernel_shape"])
    stride = tuple(int(s) for s in attributes.get("strides", kernel))
    pads = [int(p) for p in attributes.get("pads", [0] * 2 * len(kernel))]
    if len(kernel) != 2:
        raise ValueError(f"{op} over {len(kernel)} dimensions: secure pooling is 2-D only (MaxPool2d, AvgPool2d)")
    if len(set(pads)) > 1:  # crypten pads both dimensions by one number
        raise ValueError(f"{op} with padding {pads}: secure pooling pads every side equally")
    if any(int(d) != 1 for d in attributes.get("dilations", [1, 1])):
        raise ValueError(f"{op} with dilation {list(attributes['dilations'])}: secure pooling has no dilation")
    if op == "AveragePool" and pads[0] and not attributes.get("count_include_pad", 0):
        raise ValueError("AvgPool2d with padding and count_include_pad=False: the secure average counts the padding")
    return kernel, stride, pads[0], bool(attributes.get("ceil_mode", 0))


def apply() -> None:
    """Install every fix once; safe to call repeatedly."""
    global _applied
    if _applied:
        return
    _alias_moved_onnx_registration()
    import crypten

    _fix_fixed_point_decode(crypten)
    _use_torchscript_onnx_exporter(crypten)
    _convert_onnx_identity(crypten)
    _reduce_over_one_axis(crypten)
    _pool_windows_as_exported(crypten)
    _allow_crypten_types_in_torch_load()
    _applied = True


def load_crypten() -> Any:
    """Return the crypten module with every compatibility fix applied."""
    apply()
    import crypten

    return crypten


# -- the session: the transport as CrypTen's communicator, a cached config ------------------
def _communicator_adapter(make_communicator: Callable[[], Any]) -> type:
    """A class with CrypTen's communicator class methods, its instance made by ``make_communicator``."""

    class InstalledTransport:
        instance: Any = None  # set by crypten.init() through initialize()

        @classmethod
        def is_initialized(cls) -> bool:
            return cls.instance is not None

        @classmethod
        def initialize(cls, rank: int = 0, world_size: int = 1, init_ttp: bool = False) -> None:
            cls.instance = make_communicator()

        @classmethod
        def get(cls) -> Any:
            return cls.instance

        @classmethod
        def shutdown(cls) -> None:
            cls.instance = None

    return InstalledTransport


class _ConfigView:
    """A caching view of one node of crypten's OmegaConf config tree.

    crypten reads ``cfg.<group>.<key>`` through OmegaConf on almost every tensor operation
    (tens of microseconds a lookup: a sixth of a training step's CPU time). A value read once
    is kept in the view's ``__dict__``, so reading it again is a plain attribute lookup (no
    Python call: every attribute access on a CrypTensor reads ``cfg.debug.validation_mode``);
    writes go to the OmegaConf node and drop the kept value.
    """

    __slots__ = ("_node", "__dict__")

    def __init__(self, node: Any) -> None:
        object.__setattr__(self, "_node", node)

    def __getattr__(self, name: str) -> Any:  # only for a value not read yet
        value = getattr(object.__getattribute__(self, "_node"), name)
        if hasattr(value, "_get_node"):  # an OmegaConf container
            value = _ConfigView(value)
        object.__getattribute__(self, "__dict__")[name] = value
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(object.__getattribute__(self, "_node"), name, value)
        object.__getattribute__(self, "__dict__").pop(name, None)


_CONFIG_GROUPS = "_view_groups"  # the config groups kept in a FastCrypTenConfig's __dict__


def _fast_config_class(base: type) -> type:
    """``base`` (crypten's CrypTenConfig) reading through a :class:`_ConfigView` of whatever
    tree it holds now. crypten's ``__getattribute__`` (a Python call and a failed lookup per
    read) gives way to the plain one: a group read once (``cfg.mpc``) is kept in the
    instance's ``__dict__``, found there without a Python call, and dropped whenever the tree
    is replaced (``temp_override``, ``load_config``, ``set_config`` assign ``config``) or the
    group itself is assigned."""

    def __getattr__(self: Any, name: str) -> Any:  # only for what is not kept yet
        if name.startswith("_"):
            raise AttributeError(name)
        state = object.__getattribute__(self, "__dict__")
        config = state["config"]
        view = state.get("_view")
        if view is None or view[0] is not config:
            view = state["_view"] = (config, _ConfigView(config))
        result = view[1]
        for key in name.split("."):
            result = getattr(result, key)
        if "." not in name:
            state[name] = result
            state.setdefault(_CONFIG_GROUPS, set()).add(name)
        return result

    def __setattr__(self: Any, name: str, value: Any) -> None:
        _forget_config_groups(self)
        base.__setattr__(self, name, value)

    def __getitem__(self: Any, name: str) -> Any:  # crypten's calls __getattribute__ itself
        return getattr(self, name)

    return type("FastCrypTenConfig", (base,), {"__getattribute__": object.__getattribute__, "__getattr__": __getattr__,
                                               "__getitem__": __getitem__, "__setattr__": __setattr__})


def _forget_config_groups(config: Any) -> None:
    """Drop the groups a FastCrypTenConfig kept (and its view): they belong to the tree it held."""
    state = vars(config)
    for name in state.pop(_CONFIG_GROUPS, ()):
        state.pop(name, None)
    state.pop("_view", None)


def _lean_attribute_lookup(crypten: Any) -> Callable[[Any, str], Any]:
    """``CrypTensor.__getattribute__`` as crypten's, with less work per lookup.

    crypten's runs on every attribute read of every CrypTensor (``x._tensor``, ``x.encoder``:
    tens of thousands per training step), each through its validation wrapper and its
    dispatch: the protected names, the built-in names, the in-place suffix, the autograd
    registry. A name that is protected, or that is none of the others and has no autograd
    function registered, resolves as a plain attribute: such names are remembered and read
    directly (the registry is asked every time, so a function registered later still counts).
    With autograd off (``crypten.no_grad()``, where the protocols compute), an operator or an
    autograd function's name resolves to the tensor's method, as crypten's dispatch would
    after its checks. ``cfg.debug.validation_mode`` is honoured as crypten's wrapper does."""
    from crypten.debug import validate_correctness

    tensor_class = crypten.CrypTensor
    dispatch = tensor_class.__getattribute__.__wrapped__  # crypten's, without the wrapper
    registry = crypten.gradients.FUNCTION_REGISTRY
    cfg = crypten.config.cfg
    plain_attribute = object.__getattribute__
    # name -> True: always plain (protected); False: plain while no autograd function has it
    plain: dict[str, bool] = {name: True for name in (*tensor_class.PROTECTED_ATTRIBUTES, "copy_")}
    builtin = dict(tensor_class.PYTHON_BUILTIN)
    # live: crypten.no_grad() and set_grad_enabled assign CrypTensor.AUTOGRAD_ENABLED here (reading
    # it as a class attribute is a Python call: crypten's metaclass has its own __getattribute__)
    class_state = vars(tensor_class)

    def __getattribute__(self: Any, name: str) -> Any:
        always = plain.get(name)
        if always or (always is False and name not in registry):
            function = plain_attribute(self, name)
        else:
            method = builtin.get(name, name)
            in_place = method.endswith("_") and not method.endswith("__")
            if always is None and name not in builtin and not in_place:
                plain[name] = False
            function = None
            if not (in_place or class_state["AUTOGRAD_ENABLED"]):
                # crypten's dispatch without autograd reads the method itself (its fallback,
                # a forward without context, only when there is no such method)
                try:
                    function = plain_attribute(self, method)
                except AttributeError:
                    pass
            if function is None:
                function = dispatch(self, name)
        if cfg.debug.validation_mode:
            return validate_correctness(self, function, name)
        return function

    return __getattribute__


def _empty_mpc_tensor(mpc_tensor: type, arithmetic: Any) -> Callable[..., None]:
    """``MPCTensor.__init__`` that makes the placeholder ``MPCTensor([])`` without sharing.

    ``shallow_copy``, ``clone`` and ``from_shares`` start from ``MPCTensor([])`` and then
    replace its shares; crypten means to skip the sharing for it but tests ``tensor is []``,
    which is never true, so each one encodes an empty tensor and draws a zero sharing (two
    PRG reads), thousands of times a training step's worth."""
    original = mpc_tensor.__init__

    def __init__(self: Any, tensor: Any, *args: Any, **kwargs: Any) -> None:
        if type(tensor) is list and not tensor and not args and not kwargs:
            super(mpc_tensor, self).__init__(requires_grad=False)
            self._tensor = torch.tensor([])
            self.ptype = arithmetic
            return
        original(self, tensor, *args, **kwargs)

    return __init__


def _lean_shallow_copy(mpc_tensor: type, context: type) -> Callable[[Any], Any]:
    """``MPCTensor.shallow_copy`` (every passthrough operation's first step: ``x + y``,
    ``x.view``, ``x[i]``, ...) without its placeholder: crypten's makes ``MPCTensor([])`` (a
    CrypTensor constructor, an empty torch tensor) only to replace its share tensor. The
    result has the same attributes, set in one go: a new, gradient-free node over the same
    share tensor and ptype."""

    def shallow_copy(self: Any) -> Any:
        return _state_copy(mpc_tensor, context, self)[0]

    return shallow_copy


_plain_attribute = object.__getattribute__  # a C call: x.__dict__ on a CrypTensor is the session's Python one


def _state_copy(mpc_tensor: type, context: type, tensor: Any) -> tuple[Any, dict]:
    """A shallow copy of ``tensor`` and the copy's attribute dict (read without the session's
    ``__getattribute__``: ``vars(x)`` and ``x.attr`` on a CrypTensor are Python calls)."""
    result = object.__new__(mpc_tensor)
    state = _plain_attribute(tensor, "__dict__")
    copied = _plain_attribute(result, "__dict__")
    copied.update(requires_grad=False, grad=None, grad_fn=None, grad_expected=0, grad_received=0,
                  children=[], ctx=context(), _tensor=state["_tensor"], ptype=state["ptype"])
    return result, copied


def _lean_passthrough(crypten: Any, mpc_tensor: type, context: type, name: str, binary: bool) -> Callable[..., Any]:
    """``MPCTensor.<name>`` for crypten's passthrough operations (``add``, ``sub``, ``mul``,
    ``matmul``, ``neg``, ``square``, ...: a shallow copy whose share tensor becomes the share
    tensor's ``name`` of the argument's): the same calls on the same share tensors, with the
    copy's and the argument's attributes read from their dicts (crypten's reads each through
    ``CrypTensor.__getattribute__``, four Python calls an operation). Under
    ``cfg.debug.validation_mode`` crypten's own runs."""
    original = vars(mpc_tensor)[name]
    cfg = crypten.config.cfg

    @functools.wraps(original)
    def passthrough(self: Any, *args: Any, **kwargs: Any) -> Any:
        if cfg.debug.validation_mode:
            return original(self, *args, **kwargs)
        result, state = _state_copy(mpc_tensor, context, self)
        if binary and args and isinstance(args[0], mpc_tensor):
            args = (_plain_attribute(args[0], "__dict__")["_tensor"], *args[1:])
        state["_tensor"] = getattr(state["_tensor"], name)(*args, **kwargs)
        return result

    return passthrough


def _product_without_clone(arithmetic: type, sentinel: int) -> Callable[..., Any]:
    """``ArithmeticSharedTensor._arithmetic_function`` that skips the copy CrypTen makes of
    ``x`` for a product of two sharings: it clones x, hands the clone to the Beaver protocol
    (which only reads it) and then points the clone's share at the product (``set_``), so
    the copy is never used. Here the product's placeholder holds a second tensor object over
    x's share (``set_`` re-points that object, not x's), and CrypTen's in-place path computes
    on it: the same protocol calls on the same values, the same result."""
    original = arithmetic._arithmetic_function

    @functools.wraps(original)
    def _arithmetic_function(self: Any, y: Any, op: str, inplace: bool = False, *args: Any, **kwargs: Any) -> Any:
        if (inplace or op in ("add", "sub") or type(self) is not arithmetic or type(y) is not arithmetic
                or type(self.share) is not torch.Tensor):
            return original(self, y, op, inplace, *args, **kwargs)
        result = arithmetic(src=sentinel)
        result.encoder = self.encoder
        result.share = self.share.detach()  # an alias of the data, never written through
        return original(result, y, op, True, *args, **kwargs)

    return _arithmetic_function


def install_session(crypten: Any, make_communicator: Callable[[], Any]) -> None:
    """CrypTen's communicator becomes ``make_communicator()`` at ``crypten.init``; its config
    reads through a cache; CrypTensor attribute lookups take the short way for plain names; the
    placeholder ``MPCTensor([])`` is made without a sharing, and neither shallow copies nor
    products of two sharings make throwaway tensors."""
    _patch("session", crypten.communicator, "DistributedCommunicator", _communicator_adapter(make_communicator))
    _patch("session", crypten.cfg, "__class__", _fast_config_class(type(crypten.cfg)))
    tensor_class = crypten.CrypTensor
    _patch("session", tensor_class, "__getattribute__", _lean_attribute_lookup(crypten))
    from crypten.mpc.ptype import ptype

    mpc_tensor = crypten.mpc.MPCTensor
    _patch("session", mpc_tensor, "__init__", _empty_mpc_tensor(mpc_tensor, ptype.arithmetic))
    context = crypten.gradients.AutogradContext
    _patch("session", mpc_tensor, "shallow_copy", _lean_shallow_copy(mpc_tensor, context))
    from crypten.mpc import mpc

    for names, binary in ((mpc.UNARY_FUNCTIONS, False), (mpc.BINARY_FUNCTIONS, True)):
        for name in names:
            _patch("session", mpc_tensor, name, _lean_passthrough(crypten, mpc_tensor, context, name, binary))
    from crypten.mpc.primitives import arithmetic

    _patch("session", arithmetic.ArithmeticSharedTensor, "_arithmetic_function",
           _product_without_clone(arithmetic.ArithmeticSharedTensor, arithmetic.SENTINEL))


def uninstall_session(crypten: Any) -> None:
    _forget_config_groups(crypten.cfg)
    restore("session")


# -- models: unit-scaled Gemm layers -------------------------------------------------------
_UNIT_GEMM: dict[int, type] = {}


class _WeightGradient:
    """The backward of ``a @ b`` when only ``b`` needs a gradient: ``a^T @ grad``."""

    @staticmethod
    def backward(ctx: Any, grad_output: Any) -> tuple[Any]:
        (a,) = ctx.saved_tensors
        return (a.t().matmul(grad_output),)


class _BothGradients:
    """The backward of ``a @ b`` when both need a gradient: ``grad b^T`` and ``a^T grad``
    (CrypTen's own backward takes them one after the other: 4 rounds, here 2)."""

    @staticmethod
    def backward(ctx: Any, grad_output: Any) -> tuple[Any, Any]:
        a, b = ctx.saved_tensors
        return tuple(matmuls_together([(grad_output, b.t()), (a.t(), grad_output)]))


def matmuls_together(pairs: list[tuple[Any, Any]]) -> list[Any]:
    """``x @ y`` for each pair of fixed-point MPCTensors of one scale: every Beaver opening in
    one round, every truncation in one (the products flattened together)."""
    import crypten
    from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor as AST
    from crypten.mpc.primitives.beaver import IgnoreEncodings

    triples = [triple_with_late_product(crypten, x.size(), y.size(), "matmul", x.device) for x, y in pairs]
    operands = [t for (x, y) in pairs for t in (x._tensor, y._tensor)]
    with IgnoreEncodings(operands + [t for triple in triples for t in triple[:2]]):
        opened = AST.reveal_batch([t - triple[i % 2] for i, (t, triple) in
                                   enumerate(zip(operands, [triple for triple in triples for _ in (0, 1)]))])
    shares = [_beaver_share(crypten, torch.matmul, a, b, take_c, opened[2 * i], opened[2 * i + 1]).share
              for i, (a, b, take_c) in enumerate(triples)]
    joined = AST.from_shares(torch.cat([plain(share).reshape(-1) for share in shares]), precision=0)
    joined = plain(joined.div_(pairs[0][0].encoder.scale).share)
    results, offset = [], 0
    for (x, _), share in zip(pairs, shares):
        result = x.shallow_copy()
        result._tensor = x._tensor.shallow_copy()
        result._tensor.share = wrapped_like(joined[offset:offset + share.numel()].reshape(share.shape),
                                            x._tensor.share)
        offset += share.numel()
        results.append(result)
    return results


def layer_matmul(crypten: Any, a: Any, b: Any) -> Any:
    """``a @ b``; when the input ``a`` needs no gradient (the first layer's features), the
    autograd node skips CrypTen's input gradient: a matmul and 2 rounds per step, unused;
    when both need one (a hidden layer), its backward opens and truncates both at once."""
    mpc_tensor = crypten.mpc.MPCTensor
    both = (a.requires_grad and type(a) is mpc_tensor and type(b) is mpc_tensor
            and a.encoder.scale == b.encoder.scale > 1)
    if not (crypten.CrypTensor.AUTOGRAD_ENABLED and b.requires_grad and (both or not a.requires_grad)
            and a.dim() == 2 and b.dim() == 2):
        return a.matmul(b)
    with crypten.no_grad():
        product = a.matmul(b)
    ctx = crypten.gradients.AutogradContext()
    ctx.save_multiple_for_backward([a, b] if both else [a])
    # the fields crypten's own autograd wrapper sets on a function's result
    product.requires_grad = True
    product.children = [a, b] if both else [b]
    product.grad_fn = _BothGradients if both else _WeightGradient
    product.ctx = ctx
    return product


def drop_unit_scalings(crypten: Any, secure: Any) -> None:
    """``nn.Linear`` arrives as ONNX Gemm with alpha = beta = 1, which CrypTen multiplies in
    (a public multiplication, hence a truncation: a round each way, per layer, with more than
    local truncation). Such layers become a plain ``a @ b + c``; the arithmetic is the same."""
    gemm = crypten.nn.Gemm
    unit = _UNIT_GEMM.get(id(gemm))
    if unit is None:
        def forward(self: Any, x: Any) -> Any:
            a, b, c = tuple(x)
            if self.trans_a:
                a = a.t()
            if self.trans_b:
                b = b.t()
            return layer_matmul(crypten, a, b).add(c)

        unit = _UNIT_GEMM[id(gemm)] = type("UnitGemm", (gemm,), {"forward": forward})
    for module in secure.modules():
        if type(module) is gemm and module.alpha == 1.0 and module.beta == 1.0:
            module.__class__ = unit


def _modules(crypten: Any) -> types.SimpleNamespace:
    primitives = crypten.mpc.primitives
    import crypten.mpc.primitives.converters as converters

    return types.SimpleNamespace(
        beaver=primitives.beaver,
        arithmetic=primitives.arithmetic,
        converters=converters,
        AST=primitives.ArithmeticSharedTensor,
        MPCTensor=crypten.mpc.MPCTensor,
    )


def _elements(size: Any) -> int:
    try:
        return math.prod(size) if size is not None else 1
    except TypeError:
        return 1


def counted(fn: Callable, counters: PartCounters, phase: str, size_of: Callable[..., Any] | None = None) -> Callable:
    """``fn`` that counts a call, its elements, and the bytes/rounds it spends under ``phase``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        counters.calls += 1
        if size_of is not None:
            counters.tuples += _elements(size_of(*args, **kwargs))
        with metered(counters, phase):
            return fn(*args, **kwargs)

    return wrapper


# -- triple sources: the provider table --------------------------------------------------
def provider_table(crypten: Any) -> dict[str, Any]:
    return vars(crypten.mpc)[_PROVIDER_TABLE]


def use_provider(crypten: Any, name: str, provider: Any) -> None:
    """Register ``provider`` under ``name`` and make it the one CrypTen uses."""
    _patch(f"provider:{name}", provider_table(crypten), name, provider)
    _patch(f"provider:{name}", crypten.cfg.mpc, "provider", name)


def drop_provider(crypten: Any, name: str, fallback: str = "TFP") -> None:
    restore(f"provider:{name}")
    if crypten.cfg.mpc.provider == name:
        crypten.cfg.mpc.provider = fallback


def _announced(fn: Callable, op: str, before: Callable[..., None] | None) -> Callable:
    """``fn`` that first calls ``before(op, *args, **kwargs)`` (where given)."""
    if before is None:
        return fn

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before(op, *args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper


def _beaver_product(crypten: Any, op: str, crypten_product: Callable) -> Callable:
    """CrypTen's Beaver product with two local products per party where it computes three:
    z = c + eps b + a delta + eps delta, and op is bilinear, so party 0 takes
    eps (b + delta) + a delta and the others eps b + a delta (CrypTen has every party
    compute eps delta and keeps party 0's). With ``active_security`` set, CrypTen's own."""
    from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor as AST
    from crypten.mpc.primitives.beaver import IgnoreEncodings

    product = getattr(torch, op)

    def beaver(x: Any, y: Any, *args: Any, **kwargs: Any) -> Any:
        if crypten.cfg.mpc.active_security:
            return crypten_product(x, y, *args, **kwargs)
        if x.device != y.device:
            raise ValueError(f"x lives on device {x.device} but y on device {y.device}")
        a, b, take_c = triple_with_late_product(crypten, x.size(), y.size(), op, x.device, *args, **kwargs)
        elementwise = op == "mul" and x.size() == y.size() and not args and not kwargs
        c = take_c() if elementwise else None  # an elementwise triple's c is never late
        if elementwise and all(type(t.share) is torch.Tensor and t.share.device.type == "cpu" for t in (x, y, a, b, c)):
            c.share = _elementwise_beaver(crypten, x.share, y.share, a.share, b.share, c.share)
            return c
        with IgnoreEncodings([a, b, x, y]):
            epsilon, delta = AST.reveal_batch([x - a, y - b])
        return _beaver_share(crypten, product, a, b, take_c if c is None else lambda: c, epsilon, delta, *args, **kwargs)

    return beaver


def triple_with_late_product(crypten: Any, size0: Any, size1: Any, op: str, device: Any, *args: Any,
                             **kwargs: Any) -> tuple[Any, Any, Callable[[], Any]]:
    """a and b of the provider's triple for ``op``, and a function that gives its c: from a
    provider that can deal c late (``additive_triple_later``: the dealer's matrix products),
    only once the caller asks for it, so the opening of eps and delta and the caller's own
    products run while the dealer makes it. While CrypTen's provider traces requests or
    holds a filled tuple cache, the triple comes through ``generate_additive_triple``, the
    method that tracing and the cache wrap."""
    provider = crypten.mpc.get_default_provider()
    later = getattr(provider, "additive_triple_later", None)
    if later is not None and not args and not provider.tracing and not provider.tuple_cache:
        return later(size0, size1, op, device=device, **kwargs)
    a, b, c = provider.generate_additive_triple(size0, size1, op, device=device, *args, **kwargs)
    return a, b, lambda: c


# elements from which the compiled pass beats torch's three addcmul_ (one party, min of 3:
# 1,024 elements 8 us against 38 us, 65,536 158 us against 57 us; a million 6.8 ms against 4.3 ms)
COMPILED_FROM = 1 << 14


def _elementwise_beaver(crypten: Any, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                        c: torch.Tensor) -> torch.Tensor:
    """This party's share of x y for shares of one shape, in as few fresh tensors as it can:
    eps and delta opened as one stacked tensor (no copy to join them for the wire), and
    c + eps (b + delta) + a delta accumulated into the triple's own c (dealt for this one
    product), at party 0 (the rest: c + eps b + a delta). From ``COMPILED_FROM`` elements the
    opening is written over a and b where the triple holds them as one block and the sum is
    one compiled pass (``protocols.beaver_kernels``); below, torch's calls cost less."""
    comm = crypten.communicator.get()
    compiled = x.numel() >= COMPILED_FROM
    masked = pair_over(a, b) if compiled else torch.empty((2, *x.shape), dtype=x.dtype, device=x.device)
    torch.sub(x, a, out=masked[0])
    torch.sub(y, b, out=masked[1])
    opened = comm.all_reduce(masked)
    c = c if c.is_contiguous() else c.contiguous()
    if compiled:
        from protocols import beaver_kernels

        return beaver_kernels.finish(x.contiguous(), y.contiguous(), masked, opened.contiguous(), c,
                                     comm.get_rank() == 0)
    epsilon, delta = opened
    c.addcmul_(epsilon, b)
    if comm.get_rank() == 0:
        c.addcmul_(epsilon, delta)
    return c.addcmul_(a, delta)


def pair_over(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(2, *a.shape) over a and b where b follows a in one storage (a triple drawn as one
    block): the opening's buffer is then memory the triple already holds. Else a new one."""
    if (a.shape == b.shape and a.is_contiguous() and b.is_contiguous()
            and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
            and b.storage_offset() == a.storage_offset() + a.numel()):
        return a.as_strided((2, *a.shape), (a.numel(), *a.stride()), a.storage_offset())
    return torch.empty((2, *a.shape), dtype=a.dtype, device=a.device)


def _beaver_share(crypten: Any, product: Callable, a: Any, b: Any, take_c: Callable[[], Any], epsilon: torch.Tensor,
                  delta: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """c, holding this party's share of x y from its triple (a, b, ``take_c()``) and the opened
    eps = x - a and delta = y - b: c + eps (b + delta) + a delta at party 0, c + eps b + a
    delta elsewhere. c is taken last: it may still be on its way from the dealer."""
    # CPU shares are summed in place where the memory is this product's own (b and c are dealt
    # for it): a first product's every fresh 8 MB is 2,048 page faults, costlier than the sums
    own = type(b.share) is torch.Tensor and b.share.is_cpu
    b_share = b.share
    if crypten.communicator.get().get_rank() == 0:
        b_share = b_share.add_(delta) if own and b_share.shape == delta.shape else b_share + delta
    local, other = product(epsilon, b_share, *args, **kwargs), product(a.share, delta, *args, **kwargs)
    local = local.add_(other) if own else local + other
    c = take_c()
    mine = own and type(c.share) is torch.Tensor and c.share.shape == local.shape
    c.share = c.share.add_(local) if mine else c.share + local
    return c


def meter_online_tuple_use(crypten: Any, counters: PartCounters, before: Callable[..., None] | None = None) -> None:
    """Charge Beaver openings (mul/matmul/conv/square, binary AND, B2A) to ``counters``;
    ``before(op, x, y, **kwargs)`` (``before("square", x)``) is told of each product first.
    Products of two sharings compute two local products where CrypTen computes three
    (:func:`_beaver_product`).

    They go through ``cfg.mpc.protocol`` (a namespace in arithmetic's globals) and the two
    hard-wired functions of ``beaver``.
    """
    from protocols import beaver_kernels

    beaver_kernels.warm_up()  # loaded now, not inside the first product
    m = _modules(crypten)
    products = {op: getattr(m.beaver, op) if op == "square" else _beaver_product(crypten, op, getattr(m.beaver, op))
                for op in _BEAVER_OPS}
    namespace = types.SimpleNamespace(
        **{op: counted(_announced(products[op], op, before), counters, "online") for op in _BEAVER_OPS},
        truncate=m.beaver.truncate,
    )
    _patch("online", vars(m.arithmetic), _PROTOCOL_NAME, namespace)
    _patch("online", crypten.cfg.mpc, "protocol", _PROTOCOL_NAME)
    _patch("online", m.beaver, "AND", counted(m.beaver.AND, counters, "online"))
    _patch("online", m.beaver, "B2A_single_bit", counted(m.beaver.B2A_single_bit, counters, "online"))


def unmeter_online_tuple_use(crypten: Any) -> None:
    restore("online")


# -- truncation -----------------------------------------------------------------------------
def install_division(crypten: Any, divide: Callable[[Any, int], Any], counters: PartCounters,
                     replaces_beaver_truncate: bool = True, exact_for_wide_values: bool = True) -> None:
    """Route every division of an arithmetic sharing by a public integer to ``divide``.

    CrypTen divides locally with 2 parties and calls ``cfg.mpc.protocol.truncate`` with more;
    both paths start at ``ArithmeticSharedTensor.div_``, which is replaced here, and
    ``beaver.truncate`` itself is replaced too (unless ``divide`` is CrypTen's own division,
    which calls it). ``exact_for_wide_values``: whether a replacing ``divide`` stays within its
    rounding for every value below 2^62 (:func:`divides_wide_values_exactly`; CrypTen's own
    division never is).
    """
    m = _modules(crypten)
    original = m.AST.div_
    if replaces_beaver_truncate:
        _patch("truncation", m.beaver, "truncate", lambda x, y: divide(x, int(y)))

    def div_(self: Any, y: Any) -> Any:
        if isinstance(y, float) and int(y) == y:
            y = int(y)
        if isinstance(y, int) and not isinstance(y, bool) and y > 0:
            counters.calls += 1
            counters.tuples += self.share.numel()
            held = self.share
            share = self.share = plain(held)  # the divisions compute on the plain tensor
            with metered(counters, "online"):
                result = divide(self, y)
            # in place, as CrypTen's own division: the sharing keeps its share tensor
            # (its 2-party path divides the share with torch's div_)
            if plain(result.share) is not share:
                share.set_(plain(result.share))
            self.share = result.share = held
            return result
        return original(self, y)

    if replaces_beaver_truncate:
        div_.exact_for_wide_values = exact_for_wide_values
    _patch("truncation", m.AST, "div_", div_)


def original_division(crypten: Any) -> Callable[[Any, int], Any]:
    """CrypTen's own division (local with 2 parties, wrap-based with more)."""
    for target, name, previous in _PATCHES.get("truncation", []):
        if name == "div_" and previous is not _MISSING:
            return previous
    return _modules(crypten).AST.div_


def divides_wide_values_exactly(crypten: Any) -> bool:
    """Whether dividing a sharing of any value below 2^62 by a public integer is exact to its
    rounding. CrypTen's own division is not, at any number of parties: with two each party
    divides its own share, and with more the wrap count it subtracts leaves out whether x + r
    wraps (its ``beaver.wraps`` says so). Either way the result is off by about 2^64 / d with
    probability |x| / 2^64, so a value at 2^52 (a product left untruncated, times 20-bit
    weights) is wrong once in 4,000. Code that leaves products untruncated to save a round
    asks this first."""
    return getattr(_modules(crypten).AST.div_, "exact_for_wide_values", False)


def uninstall_division(crypten: Any) -> None:
    restore("truncation")


# -- comparison -----------------------------------------------------------------------------
def install_comparison(crypten: Any, ltz: Callable[[Any, Callable], Any], counters: PartCounters) -> None:
    """Replace ``MPCTensor._ltz`` (and meter A2B) with ``ltz(x, crypten_ltz)``."""
    m = _modules(crypten)
    original_ltz = m.MPCTensor._ltz

    def _ltz(self: Any) -> Any:
        counters.calls += 1
        counters.tuples += self.share.numel()
        with metered(counters, "online"):
            return ltz(self, original_ltz)

    _patch("comparison", m.MPCTensor, "_ltz", _ltz)
    # A2B (the adder of binary AND triples) is the comparison's bulk: metered under it
    original_a2b = m.converters._A2B

    def _A2B(arithmetic_tensor: Any) -> Any:
        with metered(counters, "online"):
            return original_a2b(arithmetic_tensor)

    _patch("comparison", m.converters, "_A2B", _A2B)


def install_relu(crypten: Any, relu: Callable[[Any], tuple[Any, Any]], gradient: Callable[[Any, Any], Any],
                 counters: PartCounters) -> None:
    """ReLU (``MPCTensor.relu`` and CrypTen's autograd ReLU) through ``relu(x) -> (y, state)``
    and its backward through ``gradient(grad, state)``; undone with the comparison."""
    m = _modules(crypten)
    autograd_relu = crypten.gradients.get_grad_fn("relu")

    def metered_relu(x: Any) -> tuple[Any, Any]:
        counters.calls += 1
        counters.tuples += x.share.numel()
        with metered(counters, "online"):
            return relu(x)

    def forward(ctx: Any, input: Any) -> Any:
        output, state = metered_relu(input)
        ctx.save_for_backward(state)
        return output

    def backward(ctx: Any, grad_output: Any) -> Any:
        (state,) = ctx.saved_tensors
        with metered(counters, "online"):
            return gradient(grad_output, state)

    _patch("comparison", m.MPCTensor, "relu", lambda self: metered_relu(self)[0])
    _patch("comparison", autograd_relu, "forward", staticmethod(forward))
    _patch("comparison", autograd_relu, "backward", staticmethod(backward))


def uninstall_comparison(crypten: Any) -> None:
    restore("comparison")


# -- randomness -----------------------------------------------------------------------------
def install_prg(crypten: Any, prg: Any, replacements: dict[str, Callable]) -> None:
    """CrypTen's two samplers replaced by ``replacements`` (by name) wherever a module imported
    them, and ``crypten.generators`` filled by ``prg.setup_generators`` when crypten.init runs."""
    rng = importlib.import_module("crypten.common.rng")
    originals = {name: getattr(rng, name) for name in _RNG_FUNCTIONS}
    for module_name in _RNG_USERS:
        module = importlib.import_module(module_name)
        for name in _RNG_FUNCTIONS:
            if getattr(module, name, None) is originals[name]:
                _patch("prg", module, name, replacements[name])

    def _setup_prng() -> None:
        devices = [torch.device("cpu")]
        if torch.cuda.is_available():
            devices += [torch.device("cuda")] + [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())]
        prg.setup_generators(crypten, devices)

    _patch("prg", crypten, "_setup_prng", _setup_prng)


def uninstall_prg(crypten: Any) -> None:
    restore("prg")
