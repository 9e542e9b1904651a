"""Models are ordinary ``torch.nn`` definitions; CrypTen converts them for secure training."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

MODEL_KINDS = ("logreg", "mlp")


@dataclass
class ModelConfig:
    """``model.*``: which network, and the MLP's hidden layer sizes."""

    kind: str = "logreg"
    hidden: list[int] = field(default_factory=lambda: [16, 8])


def build_torch_model(config: ModelConfig, features: int, seed: int) -> nn.Module:
    """The plaintext network with its initial weights drawn from ``seed`` (public)."""
    if config.kind not in MODEL_KINDS:
        raise ValueError(f"model={config.kind!r} is not a model; choose one of {', '.join(MODEL_KINDS)}")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if config.kind == "logreg":
            return nn.Sequential(nn.Linear(features, 1))
        layers: list[nn.Module] = []
        width = features
        for hidden in config.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        return nn.Sequential(*layers, nn.Linear(width, 1))
    finally:
        torch.random.set_rng_state(generator_state)


def encrypt_model(crypten: Any, model: nn.Module, features: int, owner: int = 0, device: Any = "cpu") -> Any:
    """Convert through CrypTen's ONNX importer and secret-share the initial weights."""
    with warnings.catch_warnings():
        # the ONNX importer wraps read-only numpy buffers; the tensors are copied at encrypt()
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        secure = crypten.nn.from_pytorch(model, torch.zeros(1, features))
    _drop_unit_scalings(crypten, secure)
    secure.encrypt(src=owner)
    return secure.to(device)


_UNIT_GEMM: dict[int, type] = {}


class _WeightGradient:
    """The backward of ``a @ b`` when only ``b`` needs a gradient: ``a^T @ grad``."""

    @staticmethod
    def backward(ctx: Any, grad_output: Any) -> tuple[Any]:
        (a,) = ctx.saved_tensors
        return (a.t().matmul(grad_output),)


def _matmul(crypten: Any, a: Any, b: Any) -> Any:
    """``a @ b``; when the input ``a`` needs no gradient (the first layer's features), the
    autograd node skips CrypTen's input gradient: a matmul and 2 rounds per step, unused."""
    if not (crypten.CrypTensor.AUTOGRAD_ENABLED and b.requires_grad and not a.requires_grad
            and a.dim() == 2 and b.dim() == 2):
        return a.matmul(b)
    with crypten.no_grad():
        product = a.matmul(b)
    ctx = crypten.gradients.AutogradContext()
    ctx.save_for_backward(a)
    # the fields crypten's own autograd wrapper sets on a function's result
    product.requires_grad = True
    product.children = [b]
    product.grad_fn = _WeightGradient
    product.ctx = ctx
    return product


def _drop_unit_scalings(crypten: Any, secure: Any) -> None:
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
            return _matmul(crypten, a, b).add(c)

        unit = _UNIT_GEMM[id(gemm)] = type("UnitGemm", (gemm,), {"forward": forward})
    for module in secure.modules():
        if type(module) is gemm and module.alpha == 1.0 and module.beta == 1.0:
            module.__class__ = unit
