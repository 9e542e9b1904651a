"""The sequence job: a transformer pre-trained in plaintext by one bank, fine-tuned under MPC
on the other banks' token sequences, compared with the same fine-tuning in plaintext.

The end-to-end run is the job at its smallest (one encoder layer of width 8, one step); the
demo (``cotrain run job=sequence``) is the same code at full size.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from launch.config import load_config
from sessions import config_refusal
from mpc.data.config import DataConfig
from mpc.data.sequences import feature_names, one_hot_rows, token_columns
from mpc.data.synthetic_sequences import LENGTH, VOCABULARY, generate_sequences
from mpc.data.tables import DataError
from mpc.metrics import ClassWeights
from mpc.tolerance import FINE_TUNING_AUC_TOLERANCE, fine_tuning_tolerances, metric_tolerances


def test_each_token_becomes_the_one_hot_codes_of_its_fields():
    vocabulary = {"merchant": 3, "hour": 2}
    frame = pd.DataFrame({"merchant_00": [2, 0], "hour_00": [1, 0], "merchant_01": [0, 1], "hour_01": [0, 1]})
    codes = one_hot_rows(frame, 2, vocabulary, "bank1", "seq.csv")
    assert feature_names(2, vocabulary)[:5] == ["merchant_00=0", "merchant_00=1", "merchant_00=2", "hour_00=0",
                                                "hour_00=1"]
    assert codes.tolist() == [[0, 0, 1, 0, 1, 1, 0, 0, 1, 0], [1, 0, 0, 1, 0, 0, 1, 0, 0, 1]]


@pytest.mark.parametrize("column, value, message", [
    ("hour_01", 2, "bank1: seq.csv: column 'hour_01' holds token ids 0..1 (data.vocabulary), data row 2 does not"),
    ("merchant_00", -1, "column 'merchant_00' holds token ids 0..2"),
    ("merchant_00", 0.5, "column 'merchant_00' holds token ids 0..2"),
])
def test_a_token_outside_its_vocabulary_is_refused_by_party_file_column_and_row(column, value, message):
    frame = pd.DataFrame({name: [0, 1] for name in token_columns(2, {"merchant": 3, "hour": 2})}, dtype=float)
    frame.loc[1, column] = value
    with pytest.raises(DataError) as error:
        one_hot_rows(frame, 2, {"merchant": 3, "hour": 2}, "bank1", "seq.csv")
    assert message in str(error.value)
    assert "seq.csv" not in error.value.public  # the peers learn the party, column and row, not the file


def test_a_missing_token_column_is_named():
    frame = pd.DataFrame({"merchant_00": [0]})
    with pytest.raises(DataError, match="has no token column 'hour_00'"):
        one_hot_rows(frame, 1, {"merchant": 3, "hour": 2}, "bank1", "seq.csv")


def test_generated_sequences_carry_a_fraud_signal_in_their_last_transactions():
    frame = generate_sequences(1, 2000, seed=0)
    assert list(frame.columns[1:-1]) == token_columns(LENGTH, VOCABULARY)
    fraud = frame["is_fraud"].to_numpy() == 1
    assert 0.05 < fraud.mean() < 0.15
    last = frame[[f"merchant_{p:02d}" for p in range(LENGTH - 2, LENGTH)]].isin([7, 8, 9]).any(axis=1).to_numpy()
    assert last[fraud].mean() > last[~fraud].mean() + 0.3  # honest customers shop there too, less often
    codes = one_hot_rows(frame, LENGTH, VOCABULARY, "bank1", None)
    assert codes.shape == (2000, LENGTH * sum(VOCABULARY.values())) and (codes.sum(1) == LENGTH * len(VOCABULARY)).all()


def test_the_fine_tuning_tolerances_are_the_metrics_bounds_at_the_largest_logit_error_the_auc_allows():
    generator = torch.Generator().manual_seed(3)
    labels = (torch.rand(400, generator=generator) < 0.1).float()
    logits = 2 * labels - 1 + torch.randn(400, generator=generator)
    weights = ClassWeights(negative=0.55, positive=5.0)
    delta, tolerances = fine_tuning_tolerances(logits, labels, weights)
    assert tolerances["auc"] <= FINE_TUNING_AUC_TOLERANCE
    above = metric_tolerances(logits, labels, weights, torch.full((400,), delta * 1.01))
    assert above["auc"] > FINE_TUNING_AUC_TOLERANCE
    assert tolerances["loss"] == pytest.approx(weights.per_row(labels).mean().item() * delta, rel=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (["job=sequence", "data.partition=vertical"], "data.kind=sequence needs data.partition=horizontal"),
    (["job=sequence", "data.length=0"], "data.kind=sequence needs data.length >= 1 and data.vocabulary"),
    (["job=sequence", "train.evaluator=1"], "pretrain.owner=0 must be the evaluator (train.evaluator=1)"),
    (["pretrain.owner=0"], "pretrain.owner applies to data.kind=sequence"),
    (["job=sequence", "model.length=15"], "is not a whole number of tokens of model.length=15"),
    (["job=nothing"], "job=nothing is not available; choose one of sequence, table"),
])
def test_bad_sequence_settings_stop_before_any_party_starts(overrides, message):
    assert message in config_refusal(overrides)


@pytest.mark.slow
def test_fine_tuning_under_mpc_matches_plaintext_fine_tuning(job, monkeypatch, tmp_path):
    monkeypatch.setenv("COTRAIN_INSECURE_TEST_SEED", "11")
    summary = job("job=sequence", "num_parties=2", "protocol=tfp", "transport=gloo", "data.rows=32",
                  "data.test_rows=40", "model.d_model=8", "model.heads=2", "model.layers=1", "model.feedforward=8",
                  "pretrain.epochs=1", "pretrain.batch_size=32", "train.epochs=1", "train.batch_size=32")
    # the owner shared none of its own rows; the other bank's rows are the fine-tuning set
    assert [(party["name"], party["rows"]) for party in summary["parties"]] == [("bank0", 0), ("bank1", 32)]
    assert summary["task"] == "binary" and summary["model"] == "mpc.zoo.SequenceClassifier"
    assert summary["plaintext"] is not None and summary["secure"] is not None
    gaps = summary["gaps"]
    assert set(gaps) == {"auc", "pr_auc", "accuracy", "loss"}
    for metric, entry in gaps.items():
        assert entry["within_tolerance"], f"{metric}: gap {entry['gap']:+.4g} outside {entry['tolerance']:.4g}"
    assert gaps["auc"]["tolerance"] <= FINE_TUNING_AUC_TOLERANCE
    assert summary["logit_gap"] <= summary["logit_bound"]
    # nobody received the weights (train.reveal_to is empty): shares only
    assert all("revealed" not in party["saved"] for party in summary["per_party"])


def test_the_demo_vocabulary_is_the_generator_s():
    assert dict(load_config(["job=sequence"]).data.vocabulary) == VOCABULARY
    assert DataConfig().kind == "table"
