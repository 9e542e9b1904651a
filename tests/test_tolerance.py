"""mpc.tolerance's metric tolerances against brute force: no perturbation of the logits within
the per-row bounds moves a metric by more than its tolerance, and the bounds are not vacuous."""

from __future__ import annotations

import torch
from torch import nn

from mpc.metrics import ClassWeights, evaluate
from mpc.tolerance import compare, forward_error_bound, metric_tolerances, out_of_tolerance


def test_metric_tolerances_cover_every_perturbation_within_the_logit_bounds():
    generator = torch.Generator().manual_seed(0)
    labels = (torch.rand(400, generator=generator) < 0.1).double()
    logits = 2.5 * labels - 1.5 + torch.randn(400, generator=generator, dtype=torch.float64)
    delta = 0.02 + 0.05 * torch.rand(400, generator=generator, dtype=torch.float64)
    weights = ClassWeights.balanced(400, int(labels.sum()))
    tolerances = metric_tolerances(logits, labels, weights, delta)
    base = evaluate(logits, labels, weights).as_dict()
    largest = dict.fromkeys(base, 0.0)
    for trial in range(60):
        sign = torch.randint(0, 2, (400,), generator=generator).double() * 2 - 1
        scale = 1.0 if trial % 2 else torch.rand(400, generator=generator, dtype=torch.float64)
        moved = evaluate(logits + sign * scale * delta, labels, weights).as_dict()
        for metric in base:
            largest[metric] = max(largest[metric], abs(moved[metric] - base[metric]))
    for metric, tolerance in tolerances.items():
        assert largest[metric] <= tolerance, (metric, largest[metric], tolerance)
        assert tolerance < 0.5  # informative at this spread of logits
    verdicts = compare(base, {m: v - 2 * tolerances[m] if m == "auc" else v for m, v in base.items()}, tolerances)
    assert out_of_tolerance(verdicts) == ["auc"] and verdicts["auc"]["gap"] > 0  # signed: secure - plaintext


def test_forward_error_bound_grows_with_the_weights_and_the_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1))
    single = forward_error_bound(nn.Sequential(model[2]), 5.0)
    assert single < forward_error_bound(model, 5.0) < 1e-3


def test_each_truncation_states_its_error_and_an_unstated_one_gets_no_verdict():
    from types import SimpleNamespace

    from parties.summary import truncation_error
    from protocols.parts import ProtocolPart
    from protocols.registry import register_part
    from protocols.truncation import TruncationError

    @register_part("truncation", "states-nothing")
    class StatesNothing(ProtocolPart):  # a researcher's truncation without error_bound
        pass

    def run(name: str, parties: int) -> SimpleNamespace:
        return SimpleNamespace(protocol=SimpleNamespace(truncation=name), num_parties=parties)

    assert truncation_error(run("pairs", 3)) == truncation_error(run("topbits", 2)) == TruncationError(1.0, True)
    assert truncation_error(run("local", 3)) == TruncationError(3.0, False)
    assert truncation_error(run("states-nothing", 2)) is None
    model = nn.Sequential(nn.Linear(4, 1))
    assert forward_error_bound(model, 1.0, TruncationError(3.0, False)) > forward_error_bound(model, 1.0)


def test_only_linear_relu_stacks_get_an_mlp_bound():
    from mpc.tolerance_mlp import relu_stack

    mlp = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1))
    assert relu_stack(mlp) == [mlp[0], mlp[2]]
    assert relu_stack(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 1))) is None
    assert relu_stack(nn.Sequential(nn.Linear(4, 3), nn.ReLU())) is None
    assert relu_stack(nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 1))) is None


def _one_step_problem(rows: int = 40) -> tuple:
    from mpc.training import TrainConfig

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 4, generator=generator)
    y = (torch.rand(rows, generator=generator) < 0.3).float()
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1))
    return x, y, model, TrainConfig(epochs=1, batch_size=rows, lr=0.5), ClassWeights.balanced(rows, int(y.sum()))


def test_no_mlp_bound_where_a_hidden_unit_sits_at_relus_kink():
    """A pre-activation exactly at 0 may land on either side in the secure run: no bound."""
    from mpc.tolerance import training_weight_bound
    from mpc.training import SIGMOID_MAX_ERROR

    x, y, model, config, weights = _one_step_problem()
    clear = training_weight_bound(x, y, model, config, weights, 0, SIGMOID_MAX_ERROR)
    assert clear is not None and 0 < clear.weight_error < 0.05
    with torch.no_grad():
        model[0].bias[1] = -(model[0].weight[1] @ x[5])  # row 5's second unit at exactly 0
    assert training_weight_bound(x, y, model, config, weights, 0, SIGMOID_MAX_ERROR) is None


def test_mlp_logit_bounds_cover_weights_anywhere_within_the_weight_error():
    """Part 3 for an MLP against random weights at exactly the bound's distance (and the
    fixed point's forward error, which the bound adds, left out: the moves alone stay within)."""
    from mpc.tolerance import TrainingBound, logit_bounds
    from mpc.tolerance_mlp import mlp_weight_bound
    from mpc.training import SIGMOID_MAX_ERROR
    from protocols.truncation import TruncationError

    x, y, model, config, weights = _one_step_problem()
    weight_error, parameters = mlp_weight_bound(x, y, model, config, weights, 0, SIGMOID_MAX_ERROR,
                                                TruncationError(1.0, True))
    delta = logit_bounds(x, model, TrainingBound(weight_error, parameters, TruncationError(1.0, True)))
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        plain = model.double()(x.double()).reshape(-1)
        for _ in range(200):
            moved = [torch.randn(p.shape, generator=generator, dtype=torch.float64) for p in model.parameters()]
            scale = weight_error / torch.cat([m.reshape(-1) for m in moved]).norm()
            perturbed = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1)).double()
            for target, source, move in zip(perturbed.parameters(), model.parameters(), moved):
                target.copy_(source + scale * move)
            assert ((perturbed(x.double()).reshape(-1) - plain).abs() <= delta).all()
