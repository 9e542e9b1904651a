"""Transformer layers under MPC that CrypTen lacks: LayerNorm, GELU, softmax over attention
scores, multi-head self-attention, and ``nn.TransformerEncoderLayer``/``TransformerEncoder``
built from them.

A user's torch model keeps its ``torch.nn`` layers. Before CrypTen's ONNX export, a copy of
the model has each of these layers swapped for a stand-in computing the same thing in float
whose ONNX node is a ``cotrain`` op (``export_copy``); CrypTen's converter turns those nodes
into the secure modules below (registered in its ONNX op table by ``register_layers``).
LayerNorm, GELU and the softmax have hand-written backward passes (the derivative of an
approximation is no approximation of the derivative); attention backpropagates through
CrypTen's own matmul, reshape and transpose gradients and the softmax's.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from mpc.approximations import multiply_precisely, secure_gelu, secure_inverse_sqrt, secure_softmax

# the layers this module makes secure, by torch.nn class name
TRANSFORMER_LAYERS = ("GELU", "LayerNorm", "MultiheadAttention", "TransformerEncoder", "TransformerEncoderLayer")


class LayerError(ValueError):
    """A transformer layer is configured in a way secure training does not support."""


# -- secure functions with their own backward -----------------------------------------------
class _HandBackward:
    """CrypTen's autograd calls ``grad_fn.backward(ctx, grad)``; this one calls a closure."""

    def __init__(self, backward: Callable[[Any], tuple]) -> None:
        self._backward = backward

    def backward(self, ctx: Any, grad_output: Any) -> tuple:
        return self._backward(grad_output)


def _with_backward(crypten: Any, output: Any, inputs: list[Any], backward: Callable[[Any], tuple]) -> Any:
    """``output`` (computed without autograd from ``inputs``) as a node of CrypTen's autograd
    graph whose gradients with respect to ``inputs`` are ``backward(grad_output)``."""
    if not (crypten.CrypTensor.AUTOGRAD_ENABLED and any(getattr(x, "requires_grad", False) for x in inputs)):
        return output
    output.requires_grad = True
    output.children = list(inputs)
    output.grad_fn = _HandBackward(backward)
    output.ctx = crypten.gradients.AutogradContext()
    return output


def _sum_to(gradient: Any, shape: torch.Size) -> Any:
    """Sum a broadcast gradient back to a parameter's shape (over the leading dimensions)."""
    while gradient.dim() > len(shape):
        gradient = gradient.sum(0)
    return gradient


def layer_norm(crypten: Any, x: Any, weight: Any, bias: Any, eps: float) -> Any:
    """LayerNorm over the last dimension: (x - mean) / sqrt(var + eps) * weight + bias, the
    inverse square root as 2^-k (exact) times Newton's 1/sqrt of the mantissa."""
    with crypten.no_grad():
        centred = x - x.mean(-1, keepdim=True)
        variance = centred.square().mean(-1, keepdim=True) + eps
        scale, root = secure_inverse_sqrt(crypten, variance)
        normalised = (centred * scale) * root
        output = normalised * weight + bias

    def backward(grad: Any) -> tuple:
        # d/dx = (g' - mean(g') - x^ mean(g' x^)) / sigma with g' = g * weight
        weighted, by_normalised = grad * weight, grad * normalised
        centred_grad = weighted - weighted.mean(-1, keepdim=True)
        correction = normalised * (weighted * normalised).mean(-1, keepdim=True)
        grad_x = ((centred_grad - correction) * scale) * root
        return grad_x, _sum_to(by_normalised, weight.size()), _sum_to(grad, bias.size())

    return _with_backward(crypten, output, [x, weight, bias], backward)


def _mean_over(x: Any, dims: list[int]) -> Any:
    """The mean over ``dims``, kept as size-1 dimensions (one division by the count)."""
    count = 1
    for dim in dims:
        x, count = x.sum(dim, keepdim=True), count * x.size(dim)
    return x.div(count)


def batch_norm(crypten: Any, x: Any, weight: Any, bias: Any, running_mean: Any, running_var: Any, training: bool,
               eps: float, momentum: float) -> Any:
    """BatchNorm over every dimension but the channels (dim 1), as torch's: in training on the
    batch's statistics, with the full gradient (through the mean and the variance), the running
    statistics updated in place (the variance unbiased); in eval on the running statistics.
    The inverse square root as in :func:`layer_norm`."""
    dims = [0, *range(2, x.dim())]
    channel_shape = [1, x.size(1)] + [1] * (x.dim() - 2)
    weight_c, bias_c = weight.reshape(channel_shape), bias.reshape(channel_shape)
    with crypten.no_grad():
        if training:
            mean = _mean_over(x, dims)
            centred = x - mean
            variance = _mean_over(centred.square(), dims)
            count = x.nelement() // x.size(1)
            running_mean.set(running_mean * (1 - momentum) + mean.reshape(-1) * momentum)
            running_var.set(running_var * (1 - momentum) + variance.reshape(-1) * (momentum * count / max(count - 1, 1)))
        else:
            centred, variance = x - running_mean.reshape(channel_shape), running_var.reshape(channel_shape)
        scale, root = secure_inverse_sqrt(crypten, variance + eps)
        normalised = (centred * scale) * root
        output = normalised * weight_c + bias_c

    def backward(grad: Any) -> tuple:
        weighted = grad * weight_c
        if training:  # d/dx = (g' - mean(g') - x^ mean(g' x^)) / sigma with g' = g * weight
            weighted = weighted - _mean_over(weighted, dims) - normalised * _mean_over(weighted * normalised, dims)
        grad_x = (weighted * scale) * root
        by_normalised, by_bias = grad * normalised, grad
        for dim in reversed(dims):
            by_normalised, by_bias = by_normalised.sum(dim), by_bias.sum(dim)
        return grad_x, by_normalised, by_bias

    return _with_backward(crypten, output, [x, weight, bias], backward)


def gelu(crypten: Any, x: Any) -> Any:
    """GELU (the exact, erf form) with its derivative from the same Chebyshev terms."""
    with crypten.no_grad():
        output, derivative = secure_gelu(crypten, x)
    return _with_backward(crypten, output, [x], lambda grad: (grad * derivative,))


def softmax_last(crypten: Any, scores: Any) -> Any:
    """Softmax over the last dimension, the row maximum subtracted first (stable for any
    scores); backward: s * (g - sum(g * s))."""
    shape = scores.size()
    with crypten.no_grad():
        output = secure_softmax(crypten, scores.reshape(-1, shape[-1])).reshape(shape)

    def backward(grad: Any) -> tuple:
        return (output * (grad - (grad * output).sum(-1, keepdim=True)),)

    return _with_backward(crypten, output, [scores], backward)


def scale_precisely(crypten: Any, x: Any, factor: float) -> Any:
    """x times a public factor that is no multiple of u (:func:`multiply_precisely`), both
    ways: autograd's own order in the backward pass would multiply a rounding by the factor."""
    with crypten.no_grad():
        output = multiply_precisely(x, factor)
    return _with_backward(crypten, output, [x], lambda grad: (multiply_precisely(grad, factor),))


def self_attention(crypten: Any, x: Any, in_weight: Any, in_bias: Any, out_weight: Any, out_bias: Any,
                   heads: int, dropout: float, training: bool) -> Any:
    """Multi-head self-attention of a (batch, sequence, embedding) input, as
    ``nn.MultiheadAttention(x, x, x)`` with packed input projections."""
    batch, length, width = x.size()
    depth = width // heads
    packed = x.matmul(in_weight.t()) + in_bias

    def split(part: int) -> Any:  # (batch, heads, sequence, depth); narrow, as indexing drops autograd
        return packed.narrow(2, part * width, width).reshape(batch, length, heads, depth).permute((0, 2, 1, 3))

    query = scale_precisely(crypten, split(0), 1 / math.sqrt(depth))
    weights = softmax_last(crypten, query.matmul(split(1).transpose(-2, -1)))
    if training and dropout > 0:
        weights = weights.dropout(dropout, training=True)
    context = weights.matmul(split(2)).permute((0, 2, 1, 3)).reshape(batch, length, width)
    return context.matmul(out_weight.t()) + out_bias


def register_layers(crypten: Any) -> None:
    """Put the secure modules in CrypTen's ONNX op table (once per process)."""
    from crypten.nn import onnx_converter

    table = onnx_converter.ONNX_TO_CRYPTEN
    if "CotrainLayerNorm" in table:
        return
    Module = crypten.nn.Module

    class CotrainLayerNorm(Module):
        def __init__(self, eps: float) -> None:
            super().__init__()
            self.eps = eps

        def forward(self, inputs: Any) -> Any:
            x, weight, bias = inputs
            return layer_norm(crypten, x, weight, bias, self.eps)

        @staticmethod
        def from_onnx(attributes: dict | None = None) -> Any:
            return CotrainLayerNorm(float(attributes["epsilon"]))

    class CotrainGelu(Module):
        def forward(self, x: Any) -> Any:
            return gelu(crypten, x)

        @staticmethod
        def from_onnx(attributes: dict | None = None) -> Any:
            return CotrainGelu()

    class CotrainSelfAttention(Module):
        def __init__(self, heads: int, dropout: float) -> None:
            super().__init__()
            self.heads, self.dropout = heads, dropout

        def forward(self, inputs: Any) -> Any:
            return self_attention(crypten, *inputs, heads=self.heads, dropout=self.dropout, training=self.training)

        @staticmethod
        def from_onnx(attributes: dict | None = None) -> Any:
            return CotrainSelfAttention(int(attributes["heads"]), float(attributes["dropout"]))

    class CotrainBatchNorm(Module):
        def __init__(self, eps: float, momentum: float) -> None:
            super().__init__()
            self.eps, self.momentum = eps, momentum

        def forward(self, inputs: Any) -> Any:
            return batch_norm(crypten, *inputs, training=self.training, eps=self.eps, momentum=self.momentum)

        @staticmethod
        def from_onnx(attributes: dict | None = None) -> Any:
            return CotrainBatchNorm(float(attributes["epsilon"]), float(attributes["momentum"]))

    class CotrainDropout(Module):
        def __init__(self, p: float, channels: bool) -> None:
            super().__init__()
            self.p, self.channels = p, channels

        def forward(self, x: Any) -> Any:
            drop = x._feature_dropout if self.channels else x.dropout
            return drop(self.p, training=self.training)

        @staticmethod
        def from_onnx(attributes: dict | None = None) -> Any:
            return CotrainDropout(float(attributes["p"]), bool(attributes["channels"]))

    for cls in (CotrainLayerNorm, CotrainGelu, CotrainSelfAttention, CotrainBatchNorm, CotrainDropout):
        table[cls.__name__] = cls


# -- the float stand-ins that export as cotrain ops ------------------------------------------
def _typed_like(x: Any, node: Any) -> Any:
    """Each cotrain op's output has its input's shape and type (the exporter cannot infer it)."""
    node.setType(x.type())
    return node


class _LayerNormOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)

    @staticmethod
    def symbolic(g: Any, x: Any, weight: Any, bias: Any, eps: float) -> Any:
        return _typed_like(x, g.op("cotrain::CotrainLayerNorm", x, weight, bias, epsilon_f=eps))


class _GeluOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)

    @staticmethod
    def symbolic(g: Any, x: Any) -> Any:
        return _typed_like(x, g.op("cotrain::CotrainGelu", x))


class _BatchNormOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, running_mean: torch.Tensor,
                running_var: torch.Tensor, eps: float, momentum: float) -> torch.Tensor:
        return F.batch_norm(x, running_mean, running_var, weight, bias, False, momentum, eps)

    @staticmethod
    def symbolic(g: Any, x: Any, weight: Any, bias: Any, running_mean: Any, running_var: Any, eps: float,
                 momentum: float) -> Any:
        return _typed_like(x, g.op("cotrain::CotrainBatchNorm", x, weight, bias, running_mean, running_var,
                                   epsilon_f=eps, momentum_f=momentum))


class _DropoutOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float, channels: bool) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def symbolic(g: Any, x: Any, p: float, channels: bool) -> Any:
        return _typed_like(x, g.op("cotrain::CotrainDropout", x, p_f=p, channels_i=int(channels)))


class _SelfAttentionOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, in_weight: torch.Tensor, in_bias: torch.Tensor, out_weight: torch.Tensor,
                out_bias: torch.Tensor, heads: int, dropout: float) -> torch.Tensor:
        output, _ = F.multi_head_attention_forward(
            x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), x.shape[-1], heads, in_weight, in_bias,
            None, None, False, 0.0, out_weight, out_bias, training=False, need_weights=False)
        return output.transpose(0, 1)

    @staticmethod
    def symbolic(g: Any, x: Any, in_weight: Any, in_bias: Any, out_weight: Any, out_bias: Any, heads: int,
                 dropout: float) -> Any:
        return _typed_like(x, g.op("cotrain::CotrainSelfAttention", x, in_weight, in_bias, out_weight, out_bias,
                                   heads_i=heads, dropout_f=dropout))


class _ExportLayerNorm(nn.Module):
    def __init__(self, layer: nn.LayerNorm) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = layer.weight, layer.bias, layer.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LayerNormOp.apply(x, self.weight, self.bias, self.eps)


class _ExportGelu(nn.Module):
    def __init__(self, layer: nn.GELU) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _GeluOp.apply(x)


class _ExportBatchNorm(nn.Module):
    """BatchNorm with the running statistics as inputs of one op (CrypTen's own returns the
    training graph's tuple, normalises with an inverse square root that diverges past about
    500, and leaves the mean and variance out of the gradient)."""

    def __init__(self, layer: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.weight, self.bias, self.eps, self.momentum = layer.weight, layer.bias, layer.eps, layer.momentum
        self.register_buffer("running_mean", layer.running_mean)
        self.register_buffer("running_var", layer.running_var)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _BatchNormOp.apply(x, self.weight, self.bias, self.running_mean, self.running_var, float(self.eps),
                                  float(self.momentum))


class _ExportDropout(nn.Module):
    """Dropout, which an eval-mode export would leave out, as an op that drops under MPC in
    training (``Dropout2d``/``3d`` drop whole channels)."""

    def __init__(self, layer: nn.modules.dropout._DropoutNd) -> None:
        super().__init__()
        self.p, self.channels = layer.p, not isinstance(layer, nn.Dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _DropoutOp.apply(x, float(self.p), self.channels)


class _ExportAttention(nn.Module):
    """``nn.MultiheadAttention`` called as self-attention without masks."""

    def __init__(self, layer: nn.MultiheadAttention) -> None:
        super().__init__()
        self.in_proj_weight, self.in_proj_bias = layer.in_proj_weight, layer.in_proj_bias
        self.out_proj = layer.out_proj
        self.heads, self.dropout, self.batch_first = layer.num_heads, layer.dropout, layer.batch_first

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_padding_mask: Any = None,
                need_weights: bool = True, attn_mask: Any = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        if key is not query or value is not query or key_padding_mask is not None or attn_mask is not None \
                or is_causal:
            raise LayerError("nn.MultiheadAttention is supported as self-attention, attn(x, x, x), without masks")
        x = query if self.batch_first else query.transpose(0, 1)
        output = _SelfAttentionOp.apply(x, self.in_proj_weight, self.in_proj_bias, self.out_proj.weight,
                                        self.out_proj.bias, self.heads, float(self.dropout))
        return (output if self.batch_first else output.transpose(0, 1)), None


class _ExportEncoderLayer(nn.Module):
    """``nn.TransformerEncoderLayer``'s computation (post- or pre-norm), without masks."""

    def __init__(self, layer: nn.TransformerEncoderLayer) -> None:
        super().__init__()
        self.self_attn = _export_module(layer.self_attn)
        self.linear1, self.dropout, self.linear2 = layer.linear1, _export_module(layer.dropout), layer.linear2
        self.norm_first = layer.norm_first
        self.norm1, self.norm2 = _export_module(layer.norm1), _export_module(layer.norm2)
        self.dropout1, self.dropout2 = _export_module(layer.dropout1), _export_module(layer.dropout2)
        activation = layer.activation
        if activation is F.relu or isinstance(activation, nn.ReLU):
            self.activation: nn.Module = nn.ReLU()
        elif activation is F.gelu or isinstance(activation, nn.GELU):
            self.activation = _export_module(activation if isinstance(activation, nn.GELU) else nn.GELU())
        else:
            raise LayerError(f"nn.TransformerEncoderLayer's activation {activation!r} is not supported; use relu or gelu")

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout1(self.self_attn(x, x, x, need_weights=False)[0])

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(self, src: torch.Tensor, src_mask: Any = None, src_key_padding_mask: Any = None,
                is_causal: bool = False) -> torch.Tensor:
        if src_mask is not None or src_key_padding_mask is not None or is_causal:
            raise LayerError("nn.TransformerEncoderLayer is supported without masks")
        x = src
        if self.norm_first:
            x = x + self._attend(self.norm1(x))
            return x + self._feed_forward(self.norm2(x))
        x = self.norm1(x + self._attend(x))
        return self.norm2(x + self._feed_forward(x))


class _ExportEncoder(nn.Module):
    def __init__(self, encoder: nn.TransformerEncoder) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_export_module(layer) for layer in encoder.layers)
        self.norm = _export_module(encoder.norm) if encoder.norm is not None else None

    def forward(self, src: torch.Tensor, mask: Any = None, src_key_padding_mask: Any = None,
                is_causal: Any = None) -> torch.Tensor:
        if mask is not None or src_key_padding_mask is not None or is_causal:
            raise LayerError("nn.TransformerEncoder is supported without masks")
        for layer in self.layers:
            src = layer(src)
        return self.norm(src) if self.norm is not None else src


def check_layer_variant(module: nn.Module) -> str | None:
    """Why ``module`` (a layer cotrain makes secure itself) cannot be made secure, or None."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if not module.affine or not module.track_running_stats or module.momentum is None:
            return "BatchNorm is supported with affine=True, track_running_stats=True and a momentum (not None)"
    elif isinstance(module, nn.LayerNorm):
        if len(module.normalized_shape) != 1 or module.weight is None or module.bias is None:
            return "LayerNorm is supported over the last dimension with elementwise_affine=True and bias=True"
    elif isinstance(module, nn.GELU):
        if module.approximate != "none":
            return "GELU is supported in its exact form (approximate='none')"
    elif isinstance(module, nn.MultiheadAttention):
        if not module._qkv_same_embed_dim or module.in_proj_bias is None or module.bias_k is not None \
                or module.add_zero_attn:
            return ("MultiheadAttention is supported with kdim = vdim = embed_dim, bias=True, add_bias_kv=False "
                    "and add_zero_attn=False")
    elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        return _pool_variant_problem(module)
    return None


def _pool_variant_problem(pool: nn.MaxPool2d | nn.AvgPool2d) -> str | None:
    """What CrypTen's 2-D pooling cannot do: it pads both dimensions by one number, has no
    dilation, and divides every window by its full size."""
    padding = pool.padding if isinstance(pool.padding, tuple) else (pool.padding,)
    if len(set(padding)) > 1:
        return f"{type(pool).__name__} is supported with equal padding in both dimensions, not {pool.padding}"
    if isinstance(pool, nn.MaxPool2d) and pool.dilation not in (1, (1, 1)):
        return "MaxPool2d is supported without dilation (dilation=1)"
    if isinstance(pool, nn.AvgPool2d) and ((padding[0] and not pool.count_include_pad) or pool.divisor_override):
        return "AvgPool2d is supported with count_include_pad=True (where it pads) and no divisor_override"
    return None


def _export_module(module: nn.Module) -> nn.Module:
    for kind, stand_in in ((nn.LayerNorm, _ExportLayerNorm), (nn.GELU, _ExportGelu),
                           (nn.MultiheadAttention, _ExportAttention), (nn.TransformerEncoderLayer, _ExportEncoderLayer),
                           (nn.TransformerEncoder, _ExportEncoder),
                           ((nn.Dropout, nn.Dropout2d, nn.Dropout3d), _ExportDropout),
                           ((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), _ExportBatchNorm)):
        if isinstance(module, kind):
            return stand_in(module)
    for name, child in module.named_children():
        setattr(module, name, _export_module(child))
    return module


def export_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose transformer layers export as cotrain ops (same parameters)."""
    return _export_module(copy.deepcopy(model))
