"""Your own model: a torch.nn.Module named by import path, trained for each task.

The models below live in this test file and are named ``test_custom_models.<Class>``; the
party processes import them like any user module.

Tolerances (u = 2^-16, the ring's resolution). For a linear model trained by plain SGD whose
every step is non-expansive (lr <= 2/L, L the batch loss's smoothness; checked), the secure
weights differ from the float ones by at most u/2 + sum_t lr |e_t|, where the step's gradient
error is e_t = X^T Delta / B with each row's output-gradient error bounded by
delta = s (eps_f + l_f (|theta|_1 + 3) u + 2u): s the loss's scale (1 for cross-entropy, 2 for
squared error), eps_f the approximation's error under MPC (softmax: measured below; the
identity: 0), l_f its Lipschitz constant in the logits (softmax 1/2, identity 1). So
|e_t| <= delta sqrt(K) sqrt(sum_j mean_i x_ij^2). Metrics follow from the largest output
difference dz on the held-out rows (the weights' error plus the forward pass's (|theta|_1 + 3) u).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from launch.api import ModelNotImportable, import_path, train
from launch.config import load_config
from mpc.approximations import INVERSE_SQRT_MAX_RELATIVE_ERROR
from mpc.data.config import DataConfig
from mpc.data.preprocessing import Preprocessing
from mpc.data.labels import check_labels
from mpc.data.tables import DataError
from mpc.losses import task_loss
from mpc.models import build_torch_model
from mpc.optim import lr_at
from mpc.reference import pool_horizontal, train_plaintext
from mpc.scoring import load_model_file, score_plain
from mpc.training import TrainConfig, batch_slices, epoch_order
from sessions import config_refusal, run_job, run_parties

U = 2.0**-16


class FraudNet(nn.Module):
    """A user's own network: two blocks and a head, with its own forward."""

    def __init__(self, in_features: int, hidden: int = 8, out_features: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class LinearHead(nn.Module):
    """A linear model with K outputs: softmax regression or linear regression."""

    def __init__(self, in_features: int, out_features: int = 1) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class BatchNormNet(nn.Module):
    """A network with BatchNorm: its running statistics are buffers, not parameters."""

    def __init__(self, in_features: int, hidden: int = 6) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                    nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GeluNet(nn.Module):
    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_features, 4), nn.GELU(approximate="tanh"), nn.Linear(4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def test_builtin_models_are_two_configs_of_the_same_path():
    for choice, target in (("logreg", "mpc.zoo.LogisticRegression"), ("mlp", "mpc.zoo.MLP")):
        config = load_config([f"model={choice}"])
        assert config.model["_target_"] == target
        model = build_torch_model(config.model, 5, seed=0)
        assert next(iter(model.state_dict())) == "0.weight"  # the names saved models have always had
    config = load_config(["model=custom", "model._target_=test_custom_models.FraudNet", "model.hidden=3"])
    assert build_torch_model(config.model, 5, seed=0).body[0].out_features == 3


@pytest.mark.parametrize("overrides, message", [
    (["model=custom", "model._target_=test_custom_models.GeluNet"],
     "layer layers.1: GELU is supported in its exact form (approximate='none')"),
    (["model=custom", "model._target_=nowhere.Net"], "cannot import 'nowhere'"),
    (["model=custom", "model._target_=test_custom_models.Missing"], "defines no 'Missing'"),
    (["model=custom", "model._target_=test_custom_models.FraudNet", "model.width=3"],
     "unexpected keyword argument 'width'"),
    (["model=custom"], "model=custom needs the model class by import path"),
    (["model=mlp", "model.in_features=3"], "model.in_features is set by the engine"),
    (["data.task=multiclass", "data.classes=3"], "gives 1 outputs per row; data.task=multiclass needs 3"),
    (["data.task=ranking"], "data.task=ranking is not a task; choose one of binary, multiclass, regression"),
])
def test_bad_models_stop_before_any_party_starts(overrides, message):
    assert message in config_refusal(overrides)


def test_python_entry_point_needs_an_importable_model():
    assert import_path(FraudNet) == "test_custom_models.FraudNet"

    class Local(nn.Module):
        pass

    with pytest.raises(ModelNotImportable, match="defined in a function, which the party processes cannot import"):
        import_path(Local)


def test_labels_are_checked_per_task():
    check_labels(pd.Series([0, 2, 1]), "bank0", "a.csv", "y", "multiclass", 3)
    check_labels(pd.Series([-3.5, 1e3]), "bank0", "a.csv", "y", "regression", 2)
    with pytest.raises(DataError, match=r"bank0: a.csv: label column 'y' \(data.label\) must hold only the class "
                                        r"numbers 0..2 \(data.classes=3\), data row 2 does not \(it holds 3\)"):
        check_labels(pd.Series([0, 3]), "bank0", "a.csv", "y", "multiclass", 3)
    with pytest.raises(DataError, match=r"must hold only 0 and 1, data row 1 does not \(it holds 0.5\)"):
        check_labels(pd.Series([0.5, 1]), "bank0", "a.csv", "y", "binary", 2)
    with pytest.raises(DataError, match="numbers of magnitude below 1048576"):
        check_labels(pd.Series([0.0, 2e7]), "bank0", "a.csv", "y", "regression", 2)


def test_schedules_match_torch():
    for schedule, scheduler in (("step", lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5)),
                                ("cosine", lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=5))):
        config = TrainConfig(epochs=5, lr=0.3, schedule=schedule, lr_step=2, lr_gamma=0.5)
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.3)
        torch_schedule = scheduler(optimizer)
        for epoch in range(5):
            assert lr_at(config, epoch) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12)
            optimizer.step()
            torch_schedule.step()


def _approximation_errors(crypten, rank):
    """Each softmax piece as evaluated in the ring, over its whole input range."""
    from mpc.approximations import secure_exp_nonpositive, secure_reciprocal, secure_softmax

    x = torch.linspace(-24, 0, 24001)
    exp = secure_exp_nonpositive(crypten, crypten.cryptensor(x, src=0)).get_plain_text().double()
    errors = {"exp": (exp - x.double().exp()).abs().max().item()}
    for classes in (2, 3, 10):
        s = torch.linspace(1, classes, 9001)
        inverse = secure_reciprocal(crypten.cryptensor(s, src=0), 1.0, float(classes)).get_plain_text().double()
        errors[f"reciprocal on [1, {classes}]"] = (inverse - 1 / s.double()).abs().max().item()
        logits = (torch.rand(400, classes, generator=torch.Generator().manual_seed(classes)) - 0.5) * 40
        softmax = secure_softmax(crypten, crypten.cryptensor(logits, src=0)).get_plain_text().double()
        errors[f"softmax {classes}"] = (softmax - torch.softmax(logits.double(), 1)).abs().max().item()
    return errors


@pytest.fixture(scope="module")
def softmax_error() -> float:
    errors = run_parties(_approximation_errors, world=2, timeout_s=600)[0]
    print(errors)
    from mpc.approximations import EXP_MAX_ERROR, RECIPROCAL_MAX_ERROR, SOFTMAX_MAX_ERROR

    assert errors["exp"] <= EXP_MAX_ERROR
    assert all(errors[f"reciprocal on [1, {k}]"] <= RECIPROCAL_MAX_ERROR for k in (2, 3, 10))
    assert all(errors[f"softmax {k}"] <= SOFTMAX_MAX_ERROR for k in (2, 3, 10))
    return max(errors[f"softmax {k}"] for k in (2, 3, 10))


@pytest.mark.slow
def test_softmax_pieces_within_their_stated_errors_in_the_ring(softmax_error):
    assert softmax_error > 0


# --- end to end: real-shaped tables (a tiny-variance column, an offset column, a constant one)


def _write_tables(directory: Path, task: str, seed: int = 5) -> list[str]:
    generator = np.random.default_rng(seed)
    paths = []
    for name, rows in (("alpha", 150), ("beta", 150), ("heldout", 300)):
        x = generator.normal(size=(rows, 3))
        frame = pd.DataFrame({"spend": x[:, 0] * 30 + 200, "rate": x[:, 1],
                              "clock": 2e3 + x[:, 2] * 5, "flag": np.ones(rows)})
        score = np.stack([x[:, 0] - x[:, 1], x[:, 2] - 0.5 * x[:, 0], 0.3 * x[:, 1]], axis=1)
        if task == "multiclass":
            frame["y"] = np.argmax(score + generator.gumbel(size=score.shape) * 0.5, axis=1)
        else:
            frame["y"] = score[:, 0] * 1.5 + 0.5 * score[:, 1] + 0.1 * generator.normal(size=rows)
        frame.insert(0, "id", np.arange(rows))
        path = directory / f"{name}.csv"
        frame.to_csv(path, index=False)
        paths.append(str(path))
    return paths


# per task: the loss's scale s, f's Lipschitz constant l_f, and the loss's curvature in the outputs
LOSS_SHAPE = {"multiclass": (1.0, 0.5, 0.5), "regression": (2.0, 1.0, 2.0)}


def _weight_bound(data, config: TrainConfig, task: str, theta_l1: float, eps_f: float, outputs: int) -> float:
    """u/2 + sum_t lr |e_t| (module docstring), checking that every step is non-expansive."""
    scale, lipschitz, curvature = LOSS_SHAPE[task]
    delta = scale * (eps_f + lipschitz * (theta_l1 + 3) * U + 2 * U)
    rows = data.features.shape[0]
    bound = U / 2
    for epoch in range(config.epochs):
        x = torch.cat([data.features[epoch_order(rows, 0, epoch)], torch.ones(rows, 1)], dim=1).double()
        for batch in batch_slices(rows, config.batch_size):
            xb = x[batch]
            smoothness = curvature * torch.linalg.eigvalsh(xb.T @ xb).max().item() / len(xb)
            assert config.lr <= 2 / smoothness, "the non-expansive step condition must hold"
            bound += config.lr * delta * math.sqrt(outputs) * xb.pow(2).mean(0).sum().sqrt().item()
    return bound


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the module's softmax measurement runs in the first one's setup
@pytest.mark.parametrize("task, protocol", [(task, protocol) for task in ("multiclass", "regression")
                                            for protocol in ("tfp", "dealer", "ot", "malicious")])
def test_custom_linear_model_matches_plaintext(tmp_path, task, protocol, softmax_error):
    paths = _write_tables(tmp_path, task)
    classes = 3 if task == "multiclass" else 1
    config = TrainConfig(epochs=2, batch_size=50, lr=0.1)
    parties = f"parties=[{{name:alpha,data:{paths[0]},test_data:{paths[2]}}},{{name:beta,data:{paths[1]}}}]"
    summary = run_job(tmp_path / "outputs", "num_parties=2", parties, f"protocol={protocol}", "data.label=y",
                      f"data.task={task}", f"data.classes={max(classes, 2)}", "model=custom",
                      "model._target_=test_custom_models.LinearHead", f"model.out_features={classes}",
                      "train.epochs=2", "train.batch_size=50", "train.lr=0.1", "train.reveal_to=[alpha]",
                      *(["protocol.allow_insecure=true"] if protocol == "tfp" else []),
                      # a party's long ring computations can keep its heartbeat thread from answering
                      *(["transport.heartbeat_timeout_s=30"] if protocol == "malicious" else []))
    assert summary["task"] == task and summary["model"] == "test_custom_models.LinearHead"
    secure_state = torch.load(tmp_path / "outputs" / "test" / "alpha" / "model.pt")["state_dict"]
    secure_theta = torch.cat([secure_state["linear.weight"], secure_state["linear.bias"][:, None]], 1).double()

    preprocessing = Preprocessing.from_dict(summary["preprocessing"])
    data = pool_horizontal(DataConfig(label="y", task=task, classes=3), preprocessing, paths[:2], [paths[2]])
    loss = task_loss(task, 3, data.features.shape[0], 0)
    model = build_torch_model({"_target_": "test_custom_models.LinearHead", "out_features": classes},
                              data.features.shape[1], seed=0)
    plain_model, _ = train_plaintext(model, data, config, loss, seed=0)
    plain_theta = torch.cat([plain_model.linear.weight, plain_model.linear.bias[:, None]], 1).detach().double()

    theta_l1 = plain_theta.abs().sum().item() + 1.0
    eps_f = softmax_error if task == "multiclass" else 0.0
    bound = _weight_bound(data, config, task, theta_l1, eps_f, classes)
    error = (secure_theta - plain_theta).norm().item()
    assert error <= bound, (error, bound)

    test_x = torch.cat([data.test_features, torch.ones(len(data.test_features), 1)], dim=1).double()
    dz = bound * test_x.norm(dim=1).max().item() + (theta_l1 + 3) * U
    secure, plain = summary["secure"], summary["plaintext"]
    # the signed gaps of the task's metrics; tolerances are derived for binary logistic regression only
    assert {m: g["gap"] for m, g in summary["gaps"].items()} == {m: secure[m] - plain[m] for m in summary["gaps"]}
    assert set(summary["gaps"]) == ({"rmse", "r2", "loss"} if task == "regression" else {"accuracy", "macro_f1", "loss"})
    assert all(g["tolerance"] is None and g["within_tolerance"] is None for g in summary["gaps"].values())
    if task == "regression":
        assert abs(secure["rmse"] - plain["rmse"]) <= dz
        assert abs(secure["loss"] - plain["loss"]) <= dz * (secure["rmse"] + plain["rmse"])
        variance = data.test_labels.double().var(unbiased=False).item()
        assert abs(secure["r2"] - plain["r2"]) <= dz * (secure["rmse"] + plain["rmse"]) / variance
    else:
        assert abs(secure["loss"] - plain["loss"]) <= math.sqrt(2 * classes) * dz
        logits = (test_x @ plain_theta.T).sort(dim=1, descending=True).values
        flips = int(((logits[:, 0] - logits[:, 1]) <= 2 * dz).sum())  # rows whose predicted class may differ
        assert abs(secure["accuracy"] - plain["accuracy"]) <= flips / len(test_x)
        support = int(torch.bincount(data.test_labels.reshape(-1).long(), minlength=classes).min())
        assert abs(secure["macro_f1"] - plain["macro_f1"]) <= 6 * flips / support
    print(f"{task}/{protocol}: weight error {error:.2e} <= bound {bound:.2e}")


@pytest.mark.slow
def test_python_entry_point_trains_a_user_network(tmp_path):
    summary = train(FraudNet, hidden=6, overrides=[f"output_dir={tmp_path}", "num_parties=2", "data.rows=300",
                                                   "data.test_rows=600", "train.epochs=2", "train.batch_size=64",
                                                   "transport.timeout_s=60", "launch.timeout_s=600"])
    assert summary["model"] == "test_custom_models.FraudNet" and summary["task"] == "binary"
    assert (tmp_path / summary["run_id"] / "summary.json").is_file()
    secure, plain = summary["secure"], summary["plaintext"]
    assert abs(summary["gaps"]["auc"]["gap"]) <= 0.01, (secure, plain)
    for metric in ("pr_auc", "accuracy", "loss"):
        assert abs(secure[metric] - plain[metric]) <= 0.02, metric


@pytest.mark.slow
def test_a_revealed_batchnorm_model_is_the_model_that_was_evaluated(tmp_path):
    """The revealed file holds every parameter and running statistic by name, and scores the
    held-out rows as the secure evaluation did. Secure evaluation normalises with the inverse
    square root of the running variance (its relative error is tested in the ring in
    test_layers), so the bound on each logit is first order in it plus the fixed point's u
    per operation."""
    summary = train(BatchNormNet, overrides=[f"output_dir={tmp_path}", "num_parties=2", "data.rows=300",
                                             "data.test_rows=300", "train.epochs=1", "train.batch_size=100",
                                             "train.reveal_to=[bank0]", "transport.timeout_s=60",
                                             "launch.timeout_s=600"])
    run = tmp_path / summary["run_id"]
    model, record = load_model_file(run / "bank0" / "model.pt")  # strict: every name of the torch state
    state = model.state_dict()
    assert not torch.equal(state["layers.1.running_mean"], torch.zeros(6))  # trained, not the initial ones
    heldout = pd.read_csv(run / "data" / "heldout.csv")
    revealed = score_plain(model, record.preprocessing, heldout).double()
    secure = torch.tensor(pd.read_csv(run / "bank0" / "heldout_predictions.csv")["logit"].to_numpy())

    variance = (state["layers.1.running_var"] + model.layers[1].eps).double()
    inverse_error = variance.rsqrt() * INVERSE_SQRT_MAX_RELATIVE_ERROR
    hidden = model.layers[0](record.preprocessing.transform(heldout).float()).double()
    spread = (hidden - state["layers.1.running_mean"].double()).abs().max(0).values
    head = model.layers[3].weight.double().abs().reshape(-1) * state["layers.1.weight"].double().abs()
    features = hidden.shape[1]
    theta_l1 = sum(p.double().abs().sum().item() for p in model.parameters())
    bound = (head * spread * inverse_error).sum().item() + 4 * (theta_l1 + features + 3) * U
    assert (revealed - secure).abs().max().item() <= bound, ((revealed - secure).abs().max().item(), bound)
    gaps = {metric: entry["gap"] for metric, entry in summary["gaps"].items()}
    print(f"batchnorm: max logit difference {(revealed - secure).abs().max().item():.2e} <= {bound:.2e}; gaps {gaps}")
