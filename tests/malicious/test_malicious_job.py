"""``cotrain run protocol=malicious``: the same trainer, summary, outputs and release gate as
every other suite, on authenticated shares (small data, end to end)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from torch import nn

from launch.cli import main
from launch.config import ConfigError
from launch.predict import predict
from mpc.scoring import load_model_file
from mpc.metrics import ClassWeights
from mpc.data.config import DataConfig
from mpc.losses import WeightedBinaryCrossEntropy
from mpc.models import build_torch_model
from mpc.reference import pool_horizontal, train_plaintext
from mpc.tolerance import METRICS, ULP, fine_tuning_tolerances, forward_error_bound, training_weight_bound
from mpc.training import SIGMOID_MAX_ERROR, TrainConfig
from test_sequence_job import assert_matches_plaintext_fine_tuning

# A party's long ring computations (numpy on 128-bit limbs) can keep its heartbeat thread from
# answering for seconds on a loaded 2-core machine: the zmq peer watch is given 30 s, not 5.
MALICIOUS = ("protocol=malicious", "transport.heartbeat_timeout_s=30")


def _within_tolerance(summary: dict, derived: bool) -> None:
    """As for every suite (tests/test_training.py): the four metrics within the tolerance
    mpc.tolerance derives from the fixed point where it derives one; where it claims none
    (verdict None), the ranking is held to 0.01 AUC."""
    assert summary["secure"] is not None and summary["plaintext"] is not None
    gaps = summary["gaps"]
    assert set(gaps) == {"auc", "pr_auc", "accuracy", "loss"}
    assert all(gap["within_tolerance"] is (True if derived else None) for gap in gaps.values()), gaps
    if not derived:
        assert abs(gaps["auc"]["gap"]) <= 0.01, gaps


@pytest.mark.slow
def test_malicious_logreg_job(job, tmp_path):
    summary = job(*MALICIOUS, "data.rows=200", "data.test_rows=300", "train.epochs=2",
                  "train.reveal_to=[bank1]")
    _within_tolerance(summary, derived=True)
    run_dir = tmp_path / "outputs" / "test"
    # every reveal went through the release gate: the parties' audit logs agree, entry by entry
    assert main(["audit", str(run_dir)]) == 0
    logs = {name: [json.loads(line) for line in (run_dir / name / "audit.jsonl").read_text().splitlines()]
            for name in ("bank0", "bank1", "bank2")}
    everyone = ["bank0", "bank1", "bank2"]
    assert [(e["what"], e["to"], e["step"]) for e in logs["bank0"]] == [
        ("scaling_statistics", everyone, 1), ("scaling_statistics", everyone, 2), ("heldout_labels", ["bank0"], 1),
        ("heldout_predictions", ["bank0"], 1), ("heldout_predictions", ["bank0"], 2), ("model", ["bank1"], 1),
        ("model", ["bank1"], 2)]
    assert logs["bank0"][3]["shape"] == [300, 1]
    # a value's digest only where the party learned it
    assert [e["digest"] is not None for e in logs["bank1"]] == [True, True, False, False, False, True, True]
    assert summary["protocol"] == "malicious"
    assert summary["protocol_parts"]["triple_source"].startswith("authenticated dealer")
    saved = {p["name"]: p["saved"] for p in summary["per_party"]}
    assert saved.pop("dealer") == {}  # the dealer's traffic is in the table; it saves nothing
    assert "revealed" in saved["bank1"] and "revealed" not in saved["bank0"]
    # the shares kept on disk are authenticated: value and MAC limbs per parameter
    shares = torch.load(run_dir / "bank0" / "model_shares.pt")
    assert all(share.dtype == torch.int64 and share.shape[0] == 4 for share in shares.values())
    _scores_over_the_authenticated_shares(run_dir, tmp_path)


def _scores_over_the_authenticated_shares(run_dir, tmp_path) -> None:
    """cotrain predict shares=... on the run's MAC-carrying shares: the parties and the dealer
    start again under the run's MAC key, the shares are MAC-checked as they are loaded, and
    the scores, revealed to the owner only, are the revealed model's within one forward
    pass's bound in the ring; a share altered on disk stops every party."""
    heldout, model_file = run_dir / "data" / "heldout.csv", run_dir / "bank1" / "model.pt"
    plain_out, shared_out = tmp_path / "plain.csv", tmp_path / "shared.csv"
    assert main(["predict", f"model={model_file}", f"data={heldout}", f"out={plain_out}"]) == 0
    scoring = ["predict", f"shares={run_dir}", f"data={heldout}", "owner=bank2", f"out={shared_out}",
               "transport.heartbeat_timeout_s=30", "transport.timeout_s=120", "transport.connect_timeout_s=120"]
    assert main(scoring) == 0
    plain = torch.tensor(pd.read_csv(plain_out)["logit"].to_numpy())
    shared = torch.tensor(pd.read_csv(shared_out)["logit"].to_numpy())
    model, record = load_model_file(model_file)
    rows = record.preprocessing.transform(pd.read_csv(heldout))
    bound = forward_error_bound(model, rows.abs().max().item()) + ULP  # + the CSV's 9 digits
    difference = (shared - plain).abs().max().item()
    assert len(shared) == 300 and difference <= bound, (difference, bound)
    print(f"scores over the authenticated shares vs the revealed model's: {difference:.2e} (bound {bound:.2e})")
    assert main(["audit", str(run_dir)]) == 0  # the scores' opening joined every party's chain
    last = json.loads((run_dir / "bank2" / "audit.jsonl").read_text().splitlines()[-1])
    assert (last["what"], last["to"], last["digest"] is not None) == ("scores", ["bank2"], True)

    shares_file = run_dir / "bank1" / "model_shares.pt"
    shares = torch.load(shares_file, weights_only=True)
    first = next(iter(shares))
    shares[first][0].view(-1)[0] += 1  # one value limb of one weight's share, MAC left as it was
    torch.save(shares, shares_file)
    assert main(scoring) == 1
    for party in ("bank0", "bank1", "bank2"):
        log = (run_dir / party / "score.log").read_text()
        assert "CheatDetected" in log and f"the model shares read back from {run_dir} were altered" in log, party
    # shares of one kind are not scored under a suite of the other
    with pytest.raises(ConfigError, match="the run saved MAC-carrying shares \\(protocol=malicious\\); score them "
                                          "under protocol=malicious, not protocol=dealer"):
        predict([f"shares={run_dir}", f"data={heldout}", "owner=bank2", f"out={shared_out}", "protocol=dealer"])


@pytest.mark.slow
def test_malicious_mlp_job(job, tmp_path):
    """One full-batch step of an MLP: no hidden unit lies within reach of ReLU's kink, so
    mpc.tolerance derives a training bound (mpc/tolerance_mlp.py). The revealed weights lie
    within it of the float run's, and the four metrics within the tolerances it gives."""
    summary = job(*MALICIOUS, "model=mlp", "model.hidden=[4]", "data.rows=80", "data.test_rows=100",
                  "train.epochs=1", "train.batch_size=256", "train.reveal_to=[bank0]")
    assert summary["model"] == "mpc.zoo.MLP"
    _within_tolerance(summary, derived=True)
    run_dir = tmp_path / "outputs" / "test"
    secure = torch.load(run_dir / "bank0" / "model.pt", weights_only=True)["state_dict"]
    paths = [str(run_dir / "data" / f"bank{i}.csv") for i in range(3)]
    _, record = load_model_file(run_dir / "bank0" / "model.pt")  # the scaling the secure run revealed
    data = pool_horizontal(DataConfig(), record.preprocessing, paths, [str(run_dir / "data" / "heldout.csv")])
    weights = ClassWeights.balanced(len(data.labels), int(data.labels.sum()))
    model = build_torch_model({"_target_": "mpc.zoo.MLP", "hidden": [4]}, data.features.shape[1], seed=0)
    config = TrainConfig(epochs=1, batch_size=256)
    plain, _ = train_plaintext(model, data, config, WeightedBinaryCrossEntropy(weights), seed=0)
    bound = training_weight_bound(data.features, data.labels, model, config, weights, 0, SIGMOID_MAX_ERROR)
    error = torch.cat([(secure[name].double() - value.detach().double()).reshape(-1)
                       for name, value in plain.state_dict().items()]).norm().item()
    assert error <= bound.weight_error, (error, bound)
    print(f"MLP weight error {error:.2e} <= bound {bound.weight_error:.2e}; logits within {summary['logit_bound']:.2e}")
    assert "revealed" in summary["per_party"][0]["saved"]


class ConvNet(nn.Module):
    """A user's network with the layer kinds the authenticated tensor adds to the MLP's: the
    features as two 3 x 3 channels through a convolution, average pooling (padded) and max
    pooling (ceil mode), then a 1-d convolution over the 4 pooled positions and a linear head."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.image = nn.Linear(in_features, 18)
        self.conv = nn.Conv2d(2, 2, 2)
        self.mean_pool = nn.AvgPool2d(2, stride=1, padding=1)
        self.max_pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.mix = nn.Conv1d(2, 2, 2)
        self.head = nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(self.image(x).view(-1, 2, 3, 3)))  # (B, 2, 2, 2)
        return self.head(self.mix(self.max_pool(self.mean_pool(h)).flatten(2)).flatten(1))


@pytest.mark.slow
def test_malicious_vertical_logreg_job(job):
    """The vertical partition, each step's tuples in several dealer answers (each checked);
    the summary's per-part counters come from the engine: calls, tuples, and the bytes and
    rounds of the dealer's answers and the openings that use them (triple source), of the
    checks of dealt tuples and of the MAC checks (check)."""
    summary = job(*MALICIOUS, "num_parties=2", "data.partition=vertical", "data.rows=300", "data.test_rows=300",
                  "train.epochs=2", "protocol.answer_elements=20000")
    _within_tolerance(summary, derived=True)
    for party in summary["per_party"]:
        if party["name"] == "dealer":
            continue
        parts = party["protocol_parts"]
        assert parts["triple_source"]["calls"] > 0 and parts["triple_source"]["tuples"] > 0, parts
        assert parts["check"]["calls"] > 0 and parts["check"]["tuples"] > 0, parts
        counted = [parts[kind][f"{phase}_{what}"] for kind in ("triple_source", "check")
                   for phase in ("offline", "online") for what in ("bytes", "rounds")]
        assert all(count > 0 for count in counted), parts
        assert sum(parts[kind][f"{phase}_bytes"] for kind in ("triple_source", "check")
                   for phase in ("offline", "online")) <= party["bytes_sent"] + party["bytes_received"], (parts, party)


class WideAndDeep(nn.Module):
    """A user's network (the MLP's layers, and a skip path): a linear term of the features
    plus a hidden ReLU layer's."""

    def __init__(self, in_features: int, hidden: int = 4) -> None:
        super().__init__()
        self.wide = nn.Linear(in_features, 1)
        self.deep = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wide(x) + self.deep(x)


@pytest.mark.slow
def test_malicious_vertical_user_network_job_within_the_network_standard(job, tmp_path):
    """A user's network (model=custom, the MLP's layers) in the vertical partition. A network
    has no derived training bound, so it is held to the standard of the sequence job: the
    secure held-out logits lie within the largest uniform logit error under which the AUC can
    move by 0.02, and each of the four metrics within its bound at that error
    (mpc.tolerance.fine_tuning_tolerances). The job also checkpoints: every party's file and
    the dealer's (the MAC key a resumed run needs)."""
    summary = job(*MALICIOUS, "num_parties=2", "data.partition=vertical", "model=custom",
                  "model._target_=test_malicious_job.WideAndDeep", "data.rows=300", "data.test_rows=300",
                  "train.epochs=1", "train.batch_size=150", "train.checkpoint_every=1")
    assert summary["model"] == "test_malicious_job.WideAndDeep" and summary["partition"] == "vertical"
    run_dir = tmp_path / "outputs" / "test"
    logits = torch.tensor(pd.read_csv(run_dir / "bank0" / "heldout_predictions.csv")["logit"].to_numpy())
    labels = torch.tensor(pd.read_csv(run_dir / "data" / "party0_heldout.csv")["is_fraud"].to_numpy(), dtype=torch.float64)
    weights = ClassWeights(**summary["class_weights"])
    delta, tolerances = fine_tuning_tolerances(logits, labels, weights)
    assert summary["logit_gap"] <= delta, (summary["logit_gap"], delta)
    for metric in METRICS:
        assert abs(summary["gaps"][metric]["gap"]) <= tolerances[metric], (metric, summary["gaps"], tolerances)
    for name in ("bank0", "bank1", "dealer"):
        assert (run_dir / name / "checkpoint.pt").is_file()


@pytest.mark.slow
def test_malicious_user_convolutional_network_with_adam(job):
    """A user's model (model=custom) trained with Adam; a network has no derived bound, so its
    ranking is held to 0.01 AUC and the other metrics to 0.02, as for every suite."""
    # its steps' numpy work (convolutions, Adam's binades) starves the heartbeat longer still
    summary = job("protocol=malicious", "transport.heartbeat_timeout_s=120", "num_parties=2", "model=custom",
                  "model._target_=test_malicious_job.ConvNet",
                  "data.rows=80", "data.test_rows=100", "train.epochs=1", "train.batch_size=80",
                  "train.optimizer=adam", "train.lr=0.01", "transport.timeout_s=300")
    assert summary["model"] == "test_malicious_job.ConvNet"
    _within_tolerance(summary, derived=False)
    secure, plain = summary["secure"], summary["plaintext"]
    for metric in ("pr_auc", "accuracy", "loss"):
        assert abs(secure[metric] - plain[metric]) <= 0.02, (metric, secure, plain)


@pytest.mark.slow
def test_malicious_transformer_fine_tuning_job(job):
    """The sequence job (a TransformerEncoderLayer: self-attention with its softmax, LayerNorm,
    GELU) fine-tuned under malicious security in two steps of the same size, so the second
    takes its tuples in the one request the first step planned; held to the job's standard."""
    summary = job(*MALICIOUS, "job=sequence", "num_parties=2", "data.rows=16", "data.test_rows=16",
                  "data.length=2", "model.length=2", "model.d_model=4", "model.heads=2", "model.layers=1",
                  "model.feedforward=4", "pretrain.epochs=1", "pretrain.batch_size=16", "train.epochs=1",
                  "train.batch_size=8")
    assert summary["protocol"] == "malicious"
    assert_matches_plaintext_fine_tuning(summary)


@pytest.mark.slow
def test_malicious_vertical_transformer_job(job):
    """The same transformer on vertically split sequences (each party one-hot encodes its own
    fields of every customer's transactions; the features are interleaved into the model's
    order under MPC), trained from the seed's weights under malicious security and held to
    the job's standard."""
    summary = job(*MALICIOUS, "job=sequence", "data.partition=vertical", "pretrain.owner=null", "num_parties=2",
                  "data.rows=16", "data.test_rows=16", "data.length=2", "model.length=2", "model.d_model=4",
                  "model.heads=2", "model.layers=1", "model.feedforward=4", "train.epochs=1", "train.batch_size=8")
    assert summary["protocol"] == "malicious" and summary["partition"] == "vertical"
    assert [party["columns"] for party in summary["parties"]] == [40, 22]  # merchant, hour, recency | amount, channel
    assert_matches_plaintext_fine_tuning(summary)
