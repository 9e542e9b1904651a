"""Models are ordinary ``torch.nn`` modules named by import path; CrypTen converts them.

A model is any ``torch.nn.Module`` built from supported layers, given in config as
``model._target_`` (Hydra instantiation) with its arguments; the engine adds ``in_features``.
"""

from __future__ import annotations

import copy
import importlib
import warnings
from typing import Any, Mapping

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn

from mpc.layers import TRANSFORMER_LAYERS, check_layer_variant, export_copy, register_layers
from protocols.crypten_hooks import drop_unit_scalings, load_crypten

# torch.nn layers that CrypTen's ONNX converter turns into secure layers: those whose name
# crypten.nn also defines (losses and containers-only aside), plus layers that export to no
# operation at all. A layer outside this list is refused before any party starts.
_CONVERTED_ELSEWHERE = ("Identity",)
_NOT_LAYERS = ("Module",)


LOGISTIC_REGRESSION = "mpc.zoo.LogisticRegression"
DEFAULT_MODEL = {"_target_": LOGISTIC_REGRESSION}
# a stand-in feature count for checking a model before the parties agree on the real one
PLACEHOLDER_FEATURES = 8


class ModelError(ValueError):
    """The model setting cannot be trained here; the message names the layer or setting."""


def supported_layers() -> tuple[str, ...]:
    """Names of the ``torch.nn`` layers a model may be built from, sorted."""
    names = {name for name in load_crypten().nn.__all__
             if isinstance(getattr(nn, name, None), type) and issubclass(getattr(nn, name), nn.Module)
             and not issubclass(getattr(nn, name), nn.modules.loss._Loss) and name not in _NOT_LAYERS}
    return tuple(sorted(names | set(_CONVERTED_ELSEWHERE) | set(TRANSFORMER_LAYERS)))


def model_target(spec: Mapping[str, Any]) -> str:
    target = spec.get("_target_")
    if not isinstance(target, str) or not target:
        raise ModelError("model._target_ must name the model class by import path, e.g. "
                         "model._target_=my_bank.models.FraudNet")
    return target


def model_kind(spec: Mapping[str, Any]) -> str:
    """``logreg`` for the zoo's logistic regression (DP-SGD and the derived tolerances know its
    closed form), otherwise the model's import path."""
    target = model_target(spec)
    return "logreg" if target == LOGISTIC_REGRESSION else target


def build_torch_model(spec: Mapping[str, Any], features: int, seed: int) -> nn.Module:
    """The plaintext network, ``spec['_target_'](in_features=features, **arguments)``
    (Hydra instantiation), with its initial weights drawn from ``seed`` (public)."""
    target = model_target(spec)
    if "in_features" in spec:
        raise ModelError("model.in_features is set by the engine from the agreed feature count; remove it")
    _import_target(target)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = instantiate(dict(spec), in_features=features, _convert_="all")
    except InstantiationException as error:
        raise ModelError(f"model._target_={target}: {_first_line(error)}") from None
    finally:
        torch.random.set_rng_state(generator_state)
    if not isinstance(model, nn.Module):
        raise ModelError(f"model._target_={target} built a {type(model).__name__}, not a torch.nn.Module")
    check_layers(model, target)
    return model


def _import_target(target: str) -> None:
    module, _, name = target.rpartition(".")
    try:
        found = hasattr(importlib.import_module(module), name) if module else False
    except ImportError as error:
        raise ModelError(f"model._target_={target}: cannot import {module!r} ({error}); the model's module "
                         "must be importable in every party process (a file on PYTHONPATH, not __main__ "
                         "or a notebook cell)") from None
    if not found:
        raise ModelError(f"model._target_={target}: {module or target!r} defines no {name or target!r}")


def _first_line(error: Exception) -> str:
    cause = error.__cause__ or error
    return f"{type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}"


def check_layers(model: nn.Module, target: str) -> None:
    """Refuse a model with a layer the secure engine cannot convert, naming it."""
    allowed = supported_layers()
    inside_attention: list[str] = []  # MultiheadAttention's own projection layers are part of it
    for name, module in model.named_modules():
        kind = type(module)
        if any(name.startswith(prefix + ".") for prefix in inside_attention):
            continue
        if kind.__module__.startswith("torch.nn") and kind.__name__ not in allowed:
            raise ModelError(f"model._target_={target}: layer {name or '(the model)'} is {kind.__name__}, "
                             f"which secure training does not support; supported layers: {', '.join(allowed)}")
        problem = check_layer_variant(module)
        if problem:
            raise ModelError(f"model._target_={target}: layer {name or '(the model)'}: {problem}")
        if isinstance(module, nn.MultiheadAttention):
            inside_attention.append(name)


def output_width(model: nn.Module, features: int) -> int:
    """The number of outputs per row, from one plaintext forward pass on a zero row (in eval
    mode, on a copy: BatchNorm refuses one row in training and would update its statistics)."""
    with torch.no_grad():
        outputs = copy.deepcopy(model).train(False)(torch.zeros(1, features))
    if outputs.dim() != 2 or outputs.shape[0] != 1:
        raise ModelError(f"the model maps a batch of shape (1, {features}) to shape {tuple(outputs.shape)}; "
                         "it must return one row of outputs per input row")
    return int(outputs.shape[1])


def convert_model(crypten: Any, model: nn.Module, features: int) -> Any:
    """The CrypTen model (not yet encrypted) of ``model``, through CrypTen's ONNX importer."""
    with warnings.catch_warnings():
        # the ONNX importer wraps read-only numpy buffers; the tensors are copied at encrypt()
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        register_layers(crypten)
        secure = crypten.nn.from_pytorch(_with_distinct_values(export_copy(model)), torch.zeros(1, features))
    _load_weights(secure, model)
    drop_unit_scalings(crypten, secure)  # nn.Linear without CrypTen's unit-scaling truncations
    return secure


def encrypt_model(crypten: Any, model: nn.Module, features: int, owner: int = 0, device: Any = "cpu") -> Any:
    """Convert (:func:`convert_model`) and secret-share the initial weights."""
    secure = convert_model(crypten, model, features)
    secure.encrypt(src=owner)
    return secure.to(device)


def _exported_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The values the ONNX export turns into initializers: parameters and floating-point buffers."""
    return list(model.parameters()) + [buffer for buffer in model.buffers() if buffer.is_floating_point()]


def _with_distinct_values(model: nn.Module) -> nn.Module:
    """The ONNX exporter merges initializers of equal values (LayerNorm's ones, zero biases,
    two BatchNorms' running variances) into one, which would then be trained as one. The copy
    that is exported gets values all different; :func:`_load_weights` puts the real ones in."""
    start = 0
    with torch.no_grad():
        for tensor in _exported_tensors(model):
            tensor.copy_(torch.arange(start, start + tensor.numel(), dtype=tensor.dtype).view_as(tensor))
            start += tensor.numel()
    return model


def _load_weights(secure: Any, model: nn.Module) -> None:
    """The torch model's weights and buffers, by name, into the converted (not yet encrypted) model."""
    state = model.state_dict()
    converted = {name.removesuffix(".data"): tensor for name, tensor in secure.named_parameters()}
    converted.update({name.removesuffix(".data"): tensor for name, tensor in secure.named_buffers()})
    unknown = sorted(set(converted) - set(state))
    if unknown:
        raise ModelError(f"the converted model holds {unknown[0]!r}, which the torch model's state does not name")
    for name, tensor in converted.items():
        tensor.data.copy_(state[name].detach())
    _buffers_as_buffers(secure, {name for name, _ in model.named_buffers()})


def _buffers_as_buffers(secure: Any, buffer_names: set[str]) -> None:
    """The converter holds every initializer as a parameter (of a node ``<name>`` with the
    attribute ``data``); the torch model's buffers (BatchNorm's running statistics) become
    buffers again, so that no optimizer steps them and ``train()`` does not mark them."""
    nodes = dict(secure.named_modules())
    for name in buffer_names:
        node = nodes.get(name)
        if node is not None and "data" in node._parameters:
            node.register_buffer("data", node._parameters.pop("data"))


def secure_state(secure: Any) -> dict[str, Any]:
    """The encrypted model's state, as torch's ``state_dict``: parameters and secret buffers."""
    state = dict(secure.named_parameters())
    state.update((name, buffer) for name, buffer in secure.named_buffers() if hasattr(buffer, "share"))
    return state
