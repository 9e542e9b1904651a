"""Transformer layers under MPC, each alone against torch (outputs, input and parameter
gradients), and their approximations as evaluated in the ring over their input ranges.

Tolerances (u = 2^-16). Each layer is re-computed here in float64 with a symbolic error at
every place where the secure layer rounds or approximates (``Errors.tap``): the input, the
weights and the output gradient carry u (CrypTen's encoder truncates towards zero); each secure product carries u (one
truncation) forward, and each gradient it feeds carries u in the backward pass; GELU, its
derivative, the softmax and the inverse square root carry their errors as measured in the
ring (``mpc.approximations``). The bound on each output and gradient element is the
first-order propagation of all of them, sum_taps |d value / d tap| * tap's error, computed by
automatic differentiation of the float64 computation (second-order terms are products of
two errors, below 1e-8 here).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mpc.approximations import (GELU_CLIP, GELU_COEFFICIENTS, GELU_DERIVATIVE_MAX_ERROR, GELU_MAX_ERROR,
                                INVERSE_SQRT_MAX_RELATIVE_ERROR, SOFTMAX_MAX_ERROR)
from sessions import run_parties

U = 2.0**-16
BATCH, LENGTH, WIDTH, HEADS, HIDDEN = 2, 3, 4, 2, 8


class Sequences(nn.Module):
    """A layer applied to rows that hold LENGTH tokens of WIDTH features."""

    def __init__(self, in_features: int, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.attention = isinstance(layer, nn.MultiheadAttention)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.view(-1, LENGTH, WIDTH)
        out = self.layer(tokens, tokens, tokens, need_weights=False)[0] if self.attention else self.layer(tokens)
        return out.reshape(-1, LENGTH * WIDTH)


class EncoderClassifier(nn.Module):
    """A user's model: features projected to tokens, a transformer encoder, a linear head."""

    def __init__(self, in_features: int, layers: int = 2, approximate: str = "none", out_features: int = 1) -> None:
        super().__init__()
        self.embed = nn.Linear(in_features, LENGTH * WIDTH)
        block = nn.TransformerEncoderLayer(WIDTH, HEADS, HIDDEN, dropout=0.1, activation=nn.GELU(approximate=approximate),
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(block, layers, norm=nn.LayerNorm(WIDTH), enable_nested_tensor=False)
        self.head = nn.Linear(LENGTH * WIDTH, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x).view(-1, LENGTH, WIDTH)).reshape(-1, LENGTH * WIDTH))


def test_a_transformer_model_is_accepted_and_a_variant_refused_before_any_party_starts():
    from launch.config import ConfigError, load_config

    load_config(["model=custom", "model._target_=test_layers.EncoderClassifier", "model.layers=1"])
    with pytest.raises(ConfigError, match="layer encoder.layers.0.activation: GELU is supported in its exact form"):
        load_config(["model=custom", "model._target_=test_layers.EncoderClassifier", "model.approximate=tanh"])


def test_parameters_of_equal_value_stay_distinct_parameters():
    """The ONNX exporter would merge the two LayerNorms' ones and zeros (and both zero biases)
    into shared parameters, trained as one."""
    from protocols.crypten_hooks import load_crypten
    from mpc.models import convert_model

    model = EncoderClassifier(LENGTH * WIDTH, layers=2)
    with torch.no_grad():
        model.head.bias.zero_()
        model.embed.bias.zero_()
    converted = {name.removesuffix(".data"): p for name, p in convert_model(load_crypten(), model, LENGTH * WIDTH)
                 .named_parameters()}
    state = dict(model.named_parameters())
    assert converted.keys() == state.keys()
    assert all(torch.equal(converted[name], state[name].detach()) for name in state)


def _layers() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    layers = {"layernorm": nn.LayerNorm(WIDTH), "gelu": nn.GELU(),
              "attention": nn.MultiheadAttention(WIDTH, HEADS, batch_first=True),
              "encoder": nn.TransformerEncoderLayer(WIDTH, HEADS, HIDDEN, dropout=0.0, activation="gelu",
                                                    batch_first=True),
              "batchnorm": nn.BatchNorm1d(LENGTH)}  # channels: the LENGTH tokens, over batch and width
    with torch.no_grad():  # LayerNorm's own initial weights are ones and zeros: make them general
        for layer in layers.values():
            for name, parameter in layer.named_parameters():
                if "norm" in name or isinstance(layer, (nn.LayerNorm, nn.BatchNorm1d)):
                    parameter.add_(torch.randn(parameter.shape) * 0.3)
    return {name: Sequences(LENGTH * WIDTH, layer) for name, layer in layers.items()}


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, LENGTH * WIDTH, generator=generator) * 2 + 0.5
    return x, torch.randn(BATCH, LENGTH * WIDTH, generator=generator)


def _secure_layers(crypten, rank):
    """Each layer's secure output and gradients, and the approximations over their ranges."""
    from mpc.approximations import secure_gelu, secure_inverse_sqrt
    from mpc.models import encrypt_model

    results = {}
    x, grad = _inputs()
    for name, model in _layers().items():
        secure = encrypt_model(crypten, model, LENGTH * WIDTH)
        secure.train()
        inputs = crypten.cryptensor(x, src=0, requires_grad=True)
        outputs = secure(inputs)
        outputs.backward(crypten.cryptensor(grad, src=0))
        results[name] = [outputs.get_plain_text().tolist(), inputs.grad.get_plain_text().tolist(),
                         *(p.grad.get_plain_text().tolist() for p in secure.parameters())]
        if name == "batchnorm":  # updated by the training forward pass
            results["running statistics"] = [b.get_plain_text().tolist() for _, b in secure.named_buffers()]
    # the attention softmax alone, on scores far from 0 (the row maximum is subtracted first)
    from mpc.layers import softmax_last

    scores = crypten.cryptensor(_scores(), src=0, requires_grad=True)
    weights = softmax_last(crypten, scores)
    weights.backward(crypten.cryptensor(_scores_gradient(), src=0))
    results["softmax"] = [weights.get_plain_text().tolist(), scores.grad.get_plain_text().tolist()]
    grid = torch.linspace(-40, 40, 16001)
    value, derivative = secure_gelu(crypten, crypten.cryptensor(grid, src=0))
    # over [4^-8, 4^16), against 1/sqrt of v as the ring holds it (v's own truncation is the
    # variance's error, accounted for in the layer's bound)
    variances = torch.logspace(math.log10(4.0**-8) + 1e-9, math.log10(4.0**16) - 1e-3, 4001, dtype=torch.float64)
    scale, root = secure_inverse_sqrt(crypten, crypten.cryptensor(variances, src=0))
    held = torch.floor(variances * 2**16) / 2**16
    product = scale.get_plain_text().double() * root.get_plain_text().double() * held.sqrt()
    results["approximations"] = {
        "gelu": (value.get_plain_text().double() - F.gelu(grid.double())).abs().max().item(),
        "gelu'": (derivative.get_plain_text().double() - _gelu_derivative(grid.double())).abs().max().item(),
        "inverse sqrt (relative)": (product - 1).abs().max().item(),
    }
    return results


def _scores() -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    return torch.randn(BATCH, HEADS, LENGTH, LENGTH, generator=generator) * 6 + 3000


def _scores_gradient() -> torch.Tensor:
    return torch.randn(BATCH, HEADS, LENGTH, LENGTH, generator=torch.Generator().manual_seed(3))


def _gelu_derivative(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2))) + x * torch.exp(-x * x / 2) / math.sqrt(2 * math.pi)


class Errors:
    """The symbolic errors of one float64 computation (see the module docstring)."""

    def __init__(self) -> None:
        self.taps: list[tuple[torch.Tensor, torch.Tensor]] = []  # (symbol, its largest absolute value)

    def symbol(self, like: torch.Tensor, error: float | torch.Tensor) -> torch.Tensor:
        symbol = torch.zeros_like(like, requires_grad=True)
        self.taps.append((symbol, torch.broadcast_to(torch.as_tensor(error, dtype=torch.float64), like.shape)))
        return symbol

    def tap(self, value: torch.Tensor, error: float | torch.Tensor, gradient_error: float = U) -> torch.Tensor:
        """``value`` plus an error of at most ``error``; its gradient gets ``gradient_error``."""
        value = value + self.symbol(value, error)
        backward = self.symbol(value, gradient_error)
        value.register_hook(lambda g: g + backward)
        return value

    def bounds(self, values: list[torch.Tensor]) -> list[torch.Tensor]:
        symbols = [symbol for symbol, _ in self.taps]
        out = []
        for value in values:
            flat, bound = value.reshape(-1), torch.zeros(value.numel(), dtype=torch.float64)
            for i in range(flat.numel()):
                grads = torch.autograd.grad(flat[i], symbols, retain_graph=True, allow_unused=True)
                bound[i] = sum((g.abs() * e).sum() for g, (_, e) in zip(grads, self.taps) if g is not None)
            out.append(bound.reshape(value.shape))
        return out


class _Softmax(torch.autograd.Function):
    """softmax(z) + error; backward as the secure layer's, from its own (erring) output."""

    @staticmethod
    def forward(ctx, scores, error):
        output = torch.softmax(scores, -1) + error
        ctx.save_for_backward(output)
        return output

    @staticmethod
    def backward(ctx, grad):
        (output,) = ctx.saved_tensors
        return output * (grad - (grad * output).sum(-1, keepdim=True)), grad


def _linear(errors: Errors, x, weight, bias):
    return errors.tap(x @ weight.t(), U) + bias


def _normalise(errors: Errors, x, weight, bias, eps, dims, shape):
    # backward: g w, its mean, g w x^, its mean, x^ times it (5 products before 1/sigma), then
    # the products by 2^-k and by the root
    x = errors.tap(x, 0.0, 2 * U)
    centred = x - errors.tap(x.mean(dims, keepdim=True), U)
    variance = errors.tap((centred * centred).mean(dims, keepdim=True), 2 * U) + eps
    inverse = variance.rsqrt()
    inverse = errors.tap(inverse, (inverse * INVERSE_SQRT_MAX_RELATIVE_ERROR).detach())
    normalised = errors.tap(centred * inverse, 2 * U, 5 * U)
    return errors.tap(normalised * weight.reshape(shape), U) + bias.reshape(shape)


def _layer_norm(errors: Errors, x, weight, bias, eps):
    return _normalise(errors, x, weight, bias, eps, (-1,), (-1,))


def _batch_norm(errors: Errors, x, weight, bias, eps):
    return _normalise(errors, x, weight, bias, eps, (0, 2), (1, -1, 1))


def _gelu(errors: Errors, x):
    x = errors.tap(x, 0.0, U)  # a node of its own: its gradient g GELU'(x) is one more product
    output = errors.tap(x * 0.5 * (1 + torch.erf(x / math.sqrt(2))), GELU_MAX_ERROR + U)
    derivative_error, seen = errors.symbol(x, GELU_DERIVATIVE_MAX_ERROR), {}
    output.register_hook(lambda g: seen.setdefault("g", g))
    x.register_hook(lambda g: g + seen["g"] * derivative_error)
    return output


def _attention(errors: Errors, x, in_weight, in_bias, out_weight, out_bias):
    depth = WIDTH // HEADS
    packed = _linear(errors, x, in_weight, in_bias)
    q, k, v = (packed[..., i * WIDTH:(i + 1) * WIDTH].reshape(BATCH, LENGTH, HEADS, depth).transpose(1, 2)
               for i in range(3))
    scores = errors.tap(errors.tap(q / math.sqrt(depth), 2 * U, 2 * U) @ k.transpose(-2, -1), U)
    weights = _Softmax.apply(scores, errors.symbol(scores, SOFTMAX_MAX_ERROR))
    context = errors.tap(weights @ v, U).transpose(1, 2).reshape(BATCH, LENGTH, WIDTH)
    return _linear(errors, context, out_weight, out_bias)


def _reference(name: str, errors: Errors, x, p):
    if name == "layernorm":
        return _layer_norm(errors, x, p[0], p[1], 1e-5)
    if name == "gelu":
        return _gelu(errors, x)
    if name == "batchnorm":
        return _batch_norm(errors, x, p[0], p[1], 1e-5)
    if name == "attention":
        return _attention(errors, x, *p)
    # post-norm encoder layer: x = norm1(x + attention(x)); norm2(x + linear2(gelu(linear1(x))))
    x = _layer_norm(errors, x + _attention(errors, x, *p[:4]), p[8], p[9], 1e-5)
    hidden = _gelu(errors, _linear(errors, x, p[4], p[5]))
    return _layer_norm(errors, x + _linear(errors, hidden, p[6], p[7]), p[10], p[11], 1e-5)


def _float_layer(name: str, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The float64 outputs and gradients and each one's first-order error bound."""
    errors = Errors()
    x, grad = (t.double() for t in _inputs())
    x = x.requires_grad_(True)
    parameters = [p.detach().double().requires_grad_(True) for p in model.parameters()]
    tokens = x.view(BATCH, LENGTH, WIDTH) + errors.symbol(x.view(BATCH, LENGTH, WIDTH), U)
    weights = [p + errors.symbol(p, U) for p in parameters]
    output = _reference(name, errors, tokens, weights).reshape(BATCH, -1)
    with torch.no_grad():  # the reference really is torch's layer
        assert torch.allclose(output, model.double()(x.detach()), atol=1e-12)
        model.float()
    loss = (output * (grad + errors.symbol(grad, U))).sum()
    gradients = torch.autograd.grad(loss, [x, *parameters], create_graph=True)
    values = [output, *gradients]
    return [v.detach() for v in values], errors.bounds(values)


@pytest.fixture(scope="module")
def secure():
    return run_parties(_secure_layers, world=2, timeout_s=600)[0]


@pytest.mark.slow
def test_approximations_in_the_ring_over_their_ranges(secure):
    errors = secure["approximations"]
    print(errors)
    assert errors["gelu"] <= GELU_MAX_ERROR and errors["gelu'"] <= GELU_DERIVATIVE_MAX_ERROR
    assert errors["inverse sqrt (relative)"] <= INVERSE_SQRT_MAX_RELATIVE_ERROR


@pytest.mark.slow
@pytest.mark.parametrize("name", ["layernorm", "gelu", "attention", "encoder", "batchnorm"])
def test_layer_matches_torch_within_its_derived_bound(secure, name):
    values, bounds = _float_layer(name, _layers()[name])
    labels = ["output", "input gradient", *(n for n, _ in _layers()[name].named_parameters())]
    for label, value, bound, measured in zip(labels, values, bounds, secure[name]):
        error = (torch.tensor(measured, dtype=torch.float64) - value).abs()
        bound = bound.reshape(error.shape)
        print(f"{name} {label}: largest error {error.max():.2e}, largest bound {bound.max():.2e}")
        assert (error <= bound).all(), f"{label}: error exceeds its bound by {(error - bound).max():.2e}"


@pytest.mark.slow
def test_batchnorm_running_statistics_follow_torch(secure):
    """After one training forward pass: (1 - m) r + m s, s the batch mean or the unbiased
    variance; each product by a public factor is one truncation (u) plus the factor's encoding
    (u/2 times the value), and the variance carries its own 2u."""
    layer = _layers()["batchnorm"].double()
    x = _inputs()[0].double().view(BATCH, LENGTH, WIDTH)
    before = [layer.layer.running_mean.clone(), layer.layer.running_var.clone()]
    layer(x.reshape(BATCH, -1))
    for name, measured, old, new in zip(("mean", "variance"), secure["running statistics"], before,
                                        [layer.layer.running_mean, layer.layer.running_var]):
        batch_value = (new - 0.9 * old) / 0.1
        bound = 2 * U + U / 2 * (old.abs() + batch_value.abs()) + 0.2 * 2 * U
        error = (torch.tensor(measured, dtype=torch.float64) - new).abs()
        assert (error <= bound).all(), (name, error.max().item(), bound.min().item())


@pytest.mark.slow
def test_attention_softmax_matches_torch_within_its_derived_bound(secure):
    errors = Errors()
    scores = _scores().double().requires_grad_(True)
    # backward: g s, then s times (g - sum g s): two products on the scores' gradient
    erring = errors.tap(scores + errors.symbol(scores, U), 0.0, 2 * U)
    weights = _Softmax.apply(erring, errors.symbol(scores, SOFTMAX_MAX_ERROR))
    grad = _scores_gradient().double()
    (gradient,) = torch.autograd.grad((weights * (grad + errors.symbol(grad, U))).sum(), scores, create_graph=True)
    assert torch.allclose(weights, torch.softmax(scores, -1), atol=1e-12)
    for label, value, bound, measured in zip(("output", "gradient"), (weights, gradient), errors.bounds([weights, gradient]),
                                             secure["softmax"]):
        error = (torch.tensor(measured, dtype=torch.float64) - value.detach()).abs()
        print(f"softmax {label}: largest error {error.max():.2e}, largest bound {bound.max():.2e}")
        assert (error <= bound).all(), f"{label}: error exceeds its bound by {(error - bound).max():.2e}"


def test_gelu_series_fit_phi_and_its_derivative_inside_the_clip():
    """The rounded coefficients, in float64, within the fit's errors (7.5e-7 and 1.3e-5)."""
    t = torch.linspace(-1, 1, 4001, dtype=torch.float64)
    x = t * GELU_CLIP
    basis = torch.stack([torch.cos(k * torch.arccos(t)) for k in range(1, 24, 2)])
    phi, derivative = (torch.tensor(row, dtype=torch.float64) @ basis + 0.5 for row in GELU_COEFFICIENTS)
    assert (phi - 0.5 * (1 + torch.erf(x / math.sqrt(2)))).abs().max() <= 8e-7
    assert (derivative - _gelu_derivative(x)).abs().max() <= 1.3e-5


@pytest.mark.parametrize("layer, message", [
    (nn.LayerNorm([2, 4]), "LayerNorm is supported over the last dimension"),
    (nn.GELU(approximate="tanh"), "GELU is supported in its exact form"),
    (nn.MultiheadAttention(4, 2, kdim=3), "MultiheadAttention is supported with kdim = vdim = embed_dim"),
    (nn.BatchNorm1d(4, momentum=None), "BatchNorm is supported with affine=True"),
    (nn.BatchNorm2d(4, affine=False), "BatchNorm is supported with affine=True"),
    (nn.MaxPool2d(3, padding=(1, 0)), "MaxPool2d is supported with equal padding in both dimensions"),
    (nn.MaxPool2d(2, dilation=2), "MaxPool2d is supported without dilation"),
    (nn.AvgPool2d(3, padding=1, count_include_pad=False), "AvgPool2d is supported with count_include_pad=True"),
])
def test_unsupported_variants_are_refused_by_name(layer, message):
    from mpc.layers import check_layer_variant
    assert message in check_layer_variant(layer)


class Channels(nn.Module):
    """Rows viewed as 4 channels of 4 x 4 (for Dropout2d), or left as they are."""

    def __init__(self, in_features: int, layer: nn.Module) -> None:
        super().__init__()
        self.layer, self.channels = layer, isinstance(layer, nn.Dropout2d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.view(-1, 4, 4, 4)).reshape(-1, 64) if self.channels else self.layer(x)


def _secure_dropout(crypten, rank):
    from mpc.models import encrypt_model

    x = torch.linspace(-3, 3, 8 * 64).reshape(8, 64)
    results = {}
    for name, layer in {"dropout": nn.Dropout(0.25), "dropout2d": nn.Dropout2d(0.5)}.items():
        secure = encrypt_model(crypten, Channels(64, layer), 64)
        secure.train()
        inputs = crypten.cryptensor(x, src=0, requires_grad=True)
        outputs = secure(inputs)
        outputs.backward(crypten.cryptensor(torch.ones(8, 64), src=0))
        secure.eval()
        results[name] = [outputs.get_plain_text(), inputs.grad.get_plain_text(), secure(inputs).get_plain_text()]
    return results


@pytest.mark.slow
def test_dropout_drops_under_mpc_in_training_only():
    """An eval-mode export would leave Dropout out: in training it must drop (each element, or
    each channel for Dropout2d) and scale the rest by 1/(1-p), in the backward pass too."""
    x = torch.linspace(-3, 3, 8 * 64).reshape(8, 64).double()
    results = run_parties(_secure_dropout, world=2, timeout_s=300)
    assert all(torch.equal(a, b) for name in results[0] for a, b in zip(results[0][name], results[1][name]))
    for name, p in (("dropout", 0.25), ("dropout2d", 0.5)):
        outputs, gradient, evaluated = (t.double() for t in results[0][name])
        kept = gradient != 0
        # u for encoding x, u for 1/(1-p) times |x| <= 3, u for the truncation
        assert (outputs[kept] - x[kept] / (1 - p)).abs().max().item() <= 6 * U
        assert (outputs[~kept].abs().max().item() if (~kept).any() else 0.0) == 0.0
        assert (gradient[kept] - 1 / (1 - p)).abs().max().item() <= 2 * U
        assert (evaluated - x).abs().max().item() <= U
        units = kept.numel() if name == "dropout" else 8 * 4
        dropped = int((~kept).sum()) // (1 if name == "dropout" else 16)
        assert abs(dropped - p * units) <= 5 * math.sqrt(units * p * (1 - p)), (name, dropped, units)
        if name == "dropout2d":  # whole channels
            per_channel = kept.view(8, 4, 16)
            assert torch.equal(per_channel.all(-1), per_channel.any(-1))


class Image(nn.Module):
    """Rows viewed as one 4 x 6 image, pooled by ``layer``."""

    def __init__(self, in_features: int, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.view(-1, 1, 4, 6)).flatten(1)


POOLS = {"max 1x2": nn.MaxPool2d((1, 2)), "average 2x1, stride 1": nn.AvgPool2d((2, 1), stride=1),
         "max 2x3, stride (1, 2), padding 1": nn.MaxPool2d((2, 3), stride=(1, 2), padding=1)}


def _secure_pools(crypten, rank):
    from mpc.models import encrypt_model

    x = torch.linspace(-3, 3, 5 * 24).reshape(5, 24)
    return {name: encrypt_model(crypten, Image(24, layer), 24)(crypten.cryptensor(x, src=0)).get_plain_text()
            for name, layer in POOLS.items()}


@pytest.mark.slow
def test_rectangular_pooling_windows_match_torch():
    """CrypTen's converter kept the first window size only, so a 1 x 2 window pooled 1 x 1
    and a 2 x 1 one 2 x 2. Bound: u to encode x; the average adds u for its division."""
    x = torch.linspace(-3, 3, 5 * 24).reshape(5, 24)
    secure = run_parties(_secure_pools, world=2, timeout_s=300)[0]
    for name, layer in POOLS.items():
        expected = Image(24, layer)(x)
        assert secure[name].shape == expected.shape, name
        assert (secure[name] - expected).abs().max().item() <= 2 * U, name
