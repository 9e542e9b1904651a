"""Party-side programs for the authenticated tensor's batched matrix products, convolutions
and pooling (importable by spawned processes)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tensor_programs import malicious_session

# each: (operands as (shape, low, high), the secure computation, the float64 one)
CASES: dict[str, tuple[list[tuple[tuple[int, ...], float, float]], Any, Any]] = {
    "bmatmul": ([((2, 2, 3, 4), -4, 4), ((2, 2, 4, 3), -2, 2)], lambda a, b: a.matmul(b), lambda a, b: a @ b),
    "bmatmul_broadcast": ([((2, 3, 3, 4), -4, 4), ((4, 2), -2, 2)], lambda a, b: a.matmul(b), lambda a, b: a @ b),
    "bmatmul_batch_broadcast": ([((2, 1, 3, 4), -4, 4), ((3, 4, 2), -2, 2)], lambda a, b: a.matmul(b),
                                lambda a, b: a @ b),
    "conv2d": ([((2, 4, 5, 6), -4, 4), ((6, 2, 3, 2), -1, 1)],
               lambda x, k: x.conv2d(k, stride=(1, 2), padding=(1, 0), groups=2),
               lambda x, k: F.conv2d(x, k, stride=(1, 2), padding=(1, 0), groups=2)),
    "conv2d_dilated": ([((1, 2, 7, 7), -4, 4), ((3, 2, 2, 3), -1, 1)],
                       lambda x, k: x.conv2d(k, stride=2, padding=1, dilation=(2, 1)),
                       lambda x, k: F.conv2d(x, k, stride=2, padding=1, dilation=(2, 1))),
    "conv1d": ([((2, 4, 7), -4, 4), ((6, 2, 3), -1, 1)], lambda x, k: x.conv1d(k, stride=2, padding=1, groups=2),
               lambda x, k: F.conv1d(x, k, stride=2, padding=1, groups=2)),
    "conv_transpose2d": ([((2, 4, 3, 3), -4, 4), ((4, 1, 3, 2), -1, 1)],
                         lambda g, k: g.conv_transpose2d(k, stride=(2, 1), padding=(1, 0), output_padding=(1, 0),
                                                         groups=2, dilation=(1, 2)),
                         lambda g, k: F.conv_transpose2d(g, k, stride=(2, 1), padding=(1, 0), output_padding=(1, 0),
                                                         groups=2, dilation=(1, 2))),
    "conv_transpose1d": ([((2, 2, 4), -4, 4), ((2, 3, 2), -1, 1)],
                         lambda g, k: g.conv_transpose1d(k, stride=2, padding=1),
                         lambda g, k: F.conv_transpose1d(g, k, stride=2, padding=1)),
    "avg_pool2d": ([((2, 3, 5, 6), -4, 4)], lambda x: x.avg_pool2d(3, stride=2, padding=1),
                   lambda x: F.avg_pool2d(x, 3, stride=2, padding=1)),
    "avg_pool2d_pow2": ([((2, 3, 4, 4), -4, 4)], lambda x: x.avg_pool2d(2), lambda x: F.avg_pool2d(x, 2)),
    "max_pool2d": ([((2, 3, 5, 6), -4, 4)], lambda x: x.max_pool2d(3, padding=1, stride=2),
                   lambda x: F.max_pool2d(x, 3, padding=1, stride=2)),
    "max_pool2d_ceil": ([((1, 2, 5, 5), -4, 4)], lambda x: x.max_pool2d(2, ceil_mode=True),
                        lambda x: F.max_pool2d(x, 2, ceil_mode=True)),
}


def operands(name: str) -> list[np.ndarray]:
    rng = np.random.default_rng(sorted(CASES).index(name))
    return [rng.uniform(low, high, shape) for shape, low, high in CASES[name][0]]


def pooling_gradient() -> tuple[np.ndarray, np.ndarray]:
    """An input with a tie at the top of one window (torch takes the first) and an output gradient."""
    rng = np.random.default_rng(11)
    x = rng.uniform(-4, 4, (2, 2, 4, 5))
    x[0, 0, 1, 1] = x[0, 0, 0, 0] = 5.0
    return x, rng.uniform(-3, 3, (2, 2, 2, 3))


def plain_pooling_gradient() -> tuple[np.ndarray, np.ndarray]:
    """torch's max_pool2d (3, stride 2, padding 1): its input gradient and its indices as one-hot windows."""
    x, grad = pooling_gradient()
    inputs = torch.tensor(x, requires_grad=True)
    output, indices = F.max_pool2d(inputs, 3, stride=2, padding=1, return_indices=True)
    output.backward(torch.tensor(grad))
    return inputs.grad.numpy(), indices.numpy()


def run_layers(transport: Any, rank: int, parties: int) -> dict[str, Any]:
    """Every case shared (operand i by party i mod parties) and revealed; then max pooling's
    indices and its backward (``_max_pool2d_backward``, as CrypTen's autograd calls it)."""
    out: dict[str, Any] = {}
    with malicious_session(transport, parties) as crypten:
        for name, (_, secure, _) in CASES.items():
            shared = [crypten.cryptensor(torch.tensor(v), src=i % parties) for i, v in enumerate(operands(name))]
            out[name] = secure(*shared).get_plain_text().double().numpy().tolist()
        x, grad = pooling_gradient()
        shared = crypten.cryptensor(torch.tensor(x), src=parties - 1)
        _, indices = shared.max_pool2d(3, padding=(1, 1), stride=(2, 2), return_indices=True)
        gradient = crypten.cryptensor(torch.tensor(grad), src=0)
        back = gradient._max_pool2d_backward(indices, 3, padding=(1, 1), stride=(2, 2), output_size=x.shape)
        out["max_pool2d_indices"] = indices.get_plain_text().double().numpy().tolist()
        out["max_pool2d_backward"] = back.get_plain_text().double().numpy().tolist()
    return out


def plain_layers() -> dict[str, np.ndarray]:
    return {name: plain(*(torch.tensor(v) for v in operands(name))).numpy() for name, (_, _, plain) in CASES.items()}


def run_transformer_layers(transport: Any, rank: int, parties: int) -> dict[str, list]:
    """tests/test_layers.py's attention and encoder layer (width 4, 2 heads, 3 tokens) on
    authenticated shares: outputs, input gradients and parameter gradients."""
    from mpc.models import encrypt_model
    from test_layers import LENGTH, WIDTH, _inputs, _layers

    x, grad = _inputs()
    results = {}
    with malicious_session(transport, parties) as crypten:
        for name in ("attention", "encoder"):
            secure = encrypt_model(crypten, _layers()[name], LENGTH * WIDTH)
            secure.train()
            inputs = crypten.cryptensor(x, src=0, requires_grad=True)
            outputs = secure(inputs)
            outputs.backward(crypten.cryptensor(grad, src=parties - 1))
            results[name] = [outputs.get_plain_text().tolist(), inputs.grad.get_plain_text().tolist(),
                             *(p.grad.get_plain_text().tolist() for p in secure.parameters())]
    return results
