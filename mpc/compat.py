"""Adapts crypten 0.4.1 to torch 2.9-2.13 and fixes its bugs.

This is the only module that touches crypten's internals for compatibility. Import
``crypten`` through :func:`load_crypten` (or import this module first) so the fixes are in
place before crypten's own import-time code runs.
"""

from __future__ import annotations

import importlib
import io
import sys
from typing import Any

import torch

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
    _allow_crypten_types_in_torch_load()
    _applied = True


def load_crypten() -> Any:
    """Return the crypten module with every compatibility fix applied."""
    apply()
    import crypten

    return crypten
