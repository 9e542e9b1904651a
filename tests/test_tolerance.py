"""mpc.tolerance's metric tolerances against brute force: no perturbation of the logits within
the per-row bounds moves a metric by more than its tolerance, and the bounds are not vacuous."""

from __future__ import annotations

import torch
from torch import nn

from mpc.metrics import ClassWeights, evaluate
from mpc.tolerance import compare, forward_error_bound, metric_tolerances, out_of_tolerance


def test_metric_tolerances_cover_every_perturbation_within_the_logit_bounds():
    generator = torch.Generator().manual_seed(3)
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
