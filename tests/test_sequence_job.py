"""The sequence job: a transformer pre-trained in plaintext by one bank, fine-tuned under MPC
on the other banks' token sequences, compared with the same fine-tuning in plaintext.

The end-to-end run is the job at its smallest (one encoder layer of width 8, one step); the
demo (``cotrain run job=sequence``) is the same code at full size.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from launch.cli import main
from launch.config import load_config
from sessions import config_refusal
from mpc.data.config import DataConfig
from mpc.data.sequences import feature_names, one_hot_features, one_hot_rows, sequence_preprocessing, token_columns
from mpc.scoring import ModelRecord, save_model_file
from mpc.data.synthetic_sequences import LENGTH, VOCABULARY, generate_sequences, vertical_fields
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


def test_a_vertical_split_gives_each_party_the_one_hot_features_of_its_own_token_columns():
    config = DataConfig(kind="sequence", partition="vertical", length=2, vocabulary={"merchant": 3, "hour": 2})
    held = [["merchant_00", "merchant_01", "merchant_07"], ["hour_00", "hour_01"]]  # a column beyond length: unused
    preprocessing, features = one_hot_features(config, held)
    assert preprocessing.features == feature_names(2, {"merchant": 3, "hour": 2})
    assert features == [["merchant_00=0", "merchant_00=1", "merchant_00=2", "merchant_01=0", "merchant_01=1",
                         "merchant_01=2"], ["hour_00=0", "hour_00=1", "hour_01=0", "hour_01=1"]]
    with pytest.raises(DataError, match="no party holds token column 'hour_01'"):
        one_hot_features(config, [held[0], ["hour_00"]])


def test_the_vertical_demo_split_deals_whole_fields_to_every_party():
    for parties in range(2, 6):
        split = vertical_fields(parties)
        assert sorted(c for group in split for c in group) == sorted(token_columns(LENGTH, VOCABULARY))
        assert all(group and len({c.rsplit("_", 1)[0] for c in group}) * LENGTH == len(group) for group in split)


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
    (["job=sequence", "data.partition=vertical"], "pretrain.owner=0 needs data.partition=horizontal"),
    (["job=sequence", "data.length=0"], "data.kind=sequence needs data.length >= 1 and data.vocabulary"),
    (["job=sequence", "train.evaluator=1"], "pretrain.owner=0 must be the evaluator (train.evaluator=1)"),
    (["pretrain.owner=0"], "pretrain.owner applies to data.kind=sequence"),
    (["job=sequence", "model.length=15"], "is not a whole number of tokens of model.length=15"),
    (["job=nothing"], "job=nothing is not available; choose one of sequence, table"),
])
def test_bad_sequence_settings_stop_before_any_party_starts(overrides, message):
    assert message in config_refusal(overrides)


def assert_matches_plaintext_fine_tuning(summary: dict) -> None:
    """The job's standard: every held-out metric within its derived tolerance of the same
    fine-tuning in plaintext, and the secure held-out logits within the logit bound."""
    assert summary["task"] == "binary" and summary["model"] == "mpc.zoo.SequenceClassifier"
    assert summary["plaintext"] is not None and summary["secure"] is not None
    gaps = summary["gaps"]
    assert set(gaps) == {"auc", "pr_auc", "accuracy", "loss"}
    for metric, entry in gaps.items():
        assert entry["within_tolerance"], f"{metric}: gap {entry['gap']:+.4g} outside {entry['tolerance']:.4g}"
    assert gaps["auc"]["tolerance"] <= FINE_TUNING_AUC_TOLERANCE
    assert summary["logit_gap"] <= summary["logit_bound"]


@pytest.mark.slow
def test_fine_tuning_under_mpc_matches_plaintext_fine_tuning(job, monkeypatch, tmp_path):
    monkeypatch.setenv("COTRAIN_INSECURE_TEST_SEED", "11")
    summary = job("job=sequence", "num_parties=2", "protocol=tfp", "transport=gloo", "data.rows=32",
                  "data.test_rows=40", "model.d_model=8", "model.heads=2", "model.layers=1", "model.feedforward=8",
                  "pretrain.epochs=1", "pretrain.batch_size=32", "train.epochs=1", "train.batch_size=32")
    # the owner shared none of its own rows; the other bank's rows are the fine-tuning set
    assert [(party["name"], party["rows"]) for party in summary["parties"]] == [("bank0", 0), ("bank1", 32)]
    assert_matches_plaintext_fine_tuning(summary)
    # nobody received the weights (train.reveal_to is empty): shares only
    assert all("revealed" not in party["saved"] for party in summary["per_party"])
    # the parties score the owner's held-out sequences again from their shares: the same weights,
    # so the scores meet the job's own standard for its held-out logits
    root = tmp_path / "outputs" / "test"
    out = tmp_path / "scores.csv"
    assert main(["predict", f"shares={root}", f"data={root / 'data' / 'heldout_sequences.csv'}", "owner=bank0",
                 f"out={out}", "transport=gloo", "protocol.allow_insecure=true", "transport.timeout_s=120"]) == 0
    scored = torch.tensor(pd.read_csv(out)["logit"].to_numpy())
    heldout = torch.tensor(pd.read_csv(root / "bank0" / "heldout_predictions.csv")["logit"].to_numpy())
    assert len(scored) == len(heldout) == 40
    assert (scored - heldout).abs().max().item() <= summary["logit_bound"]


@pytest.mark.slow
def test_a_transformer_trains_on_vertically_split_sequences_as_in_plaintext(job, monkeypatch):
    """Each party holds some fields of every customer's transactions (the demo: whole fields
    round-robin); no party pre-trains (pretrain.owner=null), the model trains from the seed's
    weights, held to the job's standard."""
    monkeypatch.setenv("COTRAIN_INSECURE_TEST_SEED", "11")
    summary = job("job=sequence", "data.partition=vertical", "pretrain.owner=null", "num_parties=2", "protocol=tfp",
                  "transport=gloo", "data.rows=16", "data.test_rows=16", "data.length=2", "model.length=2",
                  "model.d_model=4", "model.heads=2", "model.layers=1", "model.feedforward=4", "train.epochs=1",
                  "train.batch_size=8")
    assert summary["partition"] == "vertical"
    width = 2 * sum(VOCABULARY.values())
    assert [party["columns"] for party in summary["parties"]] == [2 * (10 + 6 + 4), 2 * (8 + 3)]
    assert sum(party["columns"] for party in summary["parties"]) == width
    assert_matches_plaintext_fine_tuning(summary)


SMALL_MODEL = {"_target_": "mpc.zoo.SequenceClassifier", "length": LENGTH, "d_model": 8, "heads": 2, "layers": 1,
               "feedforward": 8}


def test_predict_scores_a_sequence_table_as_the_run_encoded_it(tmp_path, capsys):
    """The record of a sequence run names its features ``merchant_00=3``: predict one-hot encodes
    the raw token columns exactly as the parties did, and refuses a token outside the vocabulary."""
    config = DataConfig(kind="sequence", length=LENGTH, vocabulary=VOCABULARY)
    width = LENGTH * sum(VOCABULARY.values())
    record = ModelRecord(SMALL_MODEL, "binary", width, sequence_preprocessing(config), "dealer", ["bank0", "bank1"])
    model = record.torch_model().train(False)
    save_model_file(tmp_path / "model.pt", record, model.state_dict())
    frame = generate_sequences(1, 20, seed=4)
    frame.to_csv(tmp_path / "rows.csv", index=False)
    assert main(["predict", f"model={tmp_path / 'model.pt'}", f"data={tmp_path / 'rows.csv'}",
                 f"out={tmp_path / 'scores.csv'}"]) == 0
    with torch.no_grad():
        expected = model(one_hot_rows(frame, LENGTH, VOCABULARY, "bank1", None).float()).reshape(-1).double()
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert scores["id"].tolist() == frame["id"].tolist()
    # the same float computation, written with 9 significant digits
    assert torch.allclose(torch.tensor(scores["logit"].to_numpy()), expected, rtol=1e-8, atol=0)
    frame.loc[6, "hour_03"] = VOCABULARY["hour"]
    frame.to_csv(tmp_path / "rows.csv", index=False)
    capsys.readouterr()
    assert main(["predict", f"model={tmp_path / 'model.pt'}", f"data={tmp_path / 'rows.csv'}",
                 f"out={tmp_path / 'scores.csv'}"]) != 0
    assert "column 'hour_03' holds token ids 0..5 (the model's vocabulary), data row 7 does not" in capsys.readouterr().err


def test_the_demo_vocabulary_is_the_generator_s():
    assert dict(load_config(["job=sequence"]).data.vocabulary) == VOCABULARY
    assert DataConfig().kind == "table"
