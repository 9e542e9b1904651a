"""The one place that wires protocol parts into CrypTen's extension points.

CrypTen's extension points and what plugs into each:

* the provider table in ``crypten.mpc`` (chosen by ``cfg.mpc.provider``): triple sources;
* ``cfg.mpc.protocol``, looked up in ``crypten.mpc.primitives.arithmetic``'s globals: a
  namespace with the Beaver functions, metered for the triple source's online cost;
* hard-wired functions, replaced here and restored on uninstall: ``beaver.AND`` (binary
  AND), ``beaver.B2A_single_bit`` (B2A), ``MPCTensor._ltz`` and ``converters._A2B``
  (comparison and A2B), ``ArithmeticSharedTensor.div_`` and
  ``beaver.truncate`` (truncation);
* randomness: ``crypten._setup_prng`` and ``crypten.generators``, and the samplers of
  ``crypten.common.rng`` wherever a module imported them by name.

No other module touches CrypTen's internals for protocol purposes (``mpc.compat`` only
fixes CrypTen's bugs).
"""

from __future__ import annotations

import functools
import math
import types
from typing import Any, Callable

import torch

from protocols.parts import PartCounters, metered

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


def meter_online_tuple_use(crypten: Any, counters: PartCounters) -> None:
    """Charge Beaver openings (mul/matmul/conv/square, binary AND, B2A) to ``counters``.

    They go through ``cfg.mpc.protocol`` (a namespace in arithmetic's globals) and the two
    hard-wired functions of ``beaver``.
    """
    m = _modules(crypten)
    namespace = types.SimpleNamespace(
        **{op: counted(getattr(m.beaver, op), counters, "online") for op in _BEAVER_OPS},
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
                     replaces_beaver_truncate: bool = True) -> None:
    """Route every division of an arithmetic sharing by a public integer to ``divide``.

    CrypTen divides locally with 2 parties and calls ``cfg.mpc.protocol.truncate`` with more;
    both paths start at ``ArithmeticSharedTensor.div_``, which is replaced here, and
    ``beaver.truncate`` itself is replaced too (unless ``divide`` is CrypTen's own division,
    which calls it).
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
            with metered(counters, "online"):
                return divide(self, y)
        return original(self, y)

    _patch("truncation", m.AST, "div_", div_)


def original_division(crypten: Any) -> Callable[[Any, int], Any]:
    """CrypTen's own division (local with 2 parties, wrap-based with more)."""
    for target, name, previous in _PATCHES.get("truncation", []):
        if name == "div_" and previous is not _MISSING:
            return previous
    return _modules(crypten).AST.div_


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


def uninstall_comparison(crypten: Any) -> None:
    restore("comparison")


# -- randomness -----------------------------------------------------------------------------
def install_prg(crypten: Any, prg: Any, replacements: dict[str, Callable]) -> None:
    """CrypTen's two samplers replaced by ``replacements`` (by name) wherever a module imported
    them, and ``crypten.generators`` filled by ``prg.setup_generators`` when crypten.init runs."""
    import importlib

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
