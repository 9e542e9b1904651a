"""Exact statistics, range guards and private errors on real-shaped tables, in both partitions."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from launch.config import load_config
from launch.local import LaunchError, launch_local
from mpc.data.guards import check_raw_range, check_scaled_range
from mpc.data.preprocessing import Preprocessing
from mpc.data.statistics import constant_columns, decode, encode, secure_sum
from mpc.data.tables import DataError
from mpc.losses import WeightedBinaryCrossEntropy
from mpc.metrics import ClassWeights, evaluate
from mpc.models import DEFAULT_MODEL, build_torch_model
from mpc.reference import pool_horizontal, pool_vertical, train_plaintext
from mpc.tolerance import logit_bounds, metric_tolerances, training_weight_bound
from mpc.training import SIGMOID_MAX_ERROR, TrainConfig
from protocols.registry import part_class
from protocols.truncation import TruncationError
from real_tables import (CONFIG, ID, OVERRIDES, float64_preprocessing, parties_override, write_horizontal,
                         write_vertical)
from sessions import run_parties

TRAIN = TrainConfig(epochs=2, batch_size=64, lr=0.1)
# protocol=tfp on the parties' own files needs protocol.allow_insecure (testing only)
TRAIN_OVERRIDES = ["protocol=tfp", "protocol.allow_insecure=true", "model=logreg", "train.epochs=2",
                   "train.batch_size=64", "train.lr=0.1", "train.reveal_to=[bank0]"]


def test_ring_encoding_is_exact():
    values = [1.7e9 + 0.123456789, 1000.0 + 1e-9, -5e11 - 0.5, 2.0**-70, 0.0, 1e-3]
    assert [decode(encode(v)) for v in values] == values
    # sums of encodings are exact: the decoded sum is the correctly rounded true sum
    assert decode(sum(encode(v) for v in (1e12, 1e-4, -1e12)) % 2**256) == 1e-4


def test_constant_columns_are_named_by_a_relative_threshold():
    mean = np.array([1.7e9, 1000.0, 0.0, 5.0])
    std = np.array([1.7e9 * 1e-16, 1e-3, 0.0, 1e-6 * 5.0])
    assert constant_columns(["ts", "calibrated", "zeros", "small"], mean, std) == ["ts", "zeros"]


def test_range_guards_name_party_file_column_and_row_but_share_no_value():
    values = np.array([[1.0, 2.0], [3.0, 1e15]])
    with pytest.raises(DataError) as raised:
        check_raw_range(values, ["a", "b"], "bank1", "/secret/bank1.csv")
    assert str(raised.value).startswith("bank1: /secret/bank1.csv: column 'b' has a value beyond")
    assert "data row 2" in raised.value.public and "1000000000000000" in str(raised.value)
    assert "/secret" not in raised.value.public and "1000000000000000" not in raised.value.public
    check_raw_range(np.array([[2.0**40, -1.7e9]]), ["a", "b"], "bank1", "f.csv")  # the limit itself is fine
    with pytest.raises(DataError, match=r"column 'a' at data row 1 lies more than 2\^12 standard deviations"):
        check_scaled_range(np.array([[5000.0]]), ["a"], "bank1", "f.csv")


def _share(paths: tuple[list[str], list[str]], partition: str, audit_dir: str, crypten, rank):
    from mpc import release
    from mpc.audit import AuditLog
    from mpc.data.sharing import share_horizontal, share_vertical

    names = tuple(f"bank{r}" for r in range(len(paths[0])))
    # the default policy, as a party runs under it: the statistics are opened through the gate
    gate = release.ReleaseGate(release.ReleasePolicy(release.default_release(), names, 0, []), rank,
                               AuditLog(Path(audit_dir) / f"{names[rank]}.jsonl"))
    share = share_horizontal if partition == "horizontal" else share_vertical
    with release.enforced(gate):
        train, test, preprocessing = share(crypten, CONFIG, paths[0][rank], paths[1][rank] or None, names[rank])
    return preprocessing.as_dict(), train.feature_names, test is not None


def _float64_preprocessing(files, partition: str) -> Preprocessing:
    """Scaling computed in float64 on the pooled raw files (feature order as the parties hold them)."""
    frames = [pd.read_csv(path) for path in files.train]
    if partition == "horizontal":
        return float64_preprocessing(pd.concat(frames, ignore_index=True), CONFIG)
    columns = [c for f in frames for c in f.columns if c not in (ID, CONFIG.label)]
    side_by_side = pd.concat(frames, axis=1)
    return float64_preprocessing(side_by_side.loc[:, ~side_by_side.columns.duplicated()], CONFIG, columns)


def _assert_matches_float64(revealed: Preprocessing, expected: Preprocessing) -> None:
    assert revealed.features == expected.features and revealed.dropped == expected.dropped == ["constant"]
    assert ID not in revealed.features
    for got, want in ((revealed.mean, expected.mean), (revealed.std, expected.std)):
        relative = np.abs(np.asarray(got) - np.asarray(want)) / np.abs(np.asarray(want))
        assert relative.max() <= 1e-6, dict(zip(revealed.features, relative))


@pytest.mark.slow
@pytest.mark.parametrize("partition, parties", [("horizontal", 3), ("vertical", 2)])
def test_revealed_statistics_match_float64(tmp_path, partition, parties):
    write = write_horizontal if partition == "horizontal" else write_vertical
    files = write(tmp_path, parties=parties, rows=150, test_rows=100)
    share = functools.partial(_share, (files.train, files.test), partition, str(tmp_path))
    results = run_parties(share, world=parties, timeout_s=600)
    records = [Preprocessing.from_dict(record) for record, _, _ in results]
    assert all(record == records[0] for record in records)  # every party holds the whole record
    assert all(names == records[0].features for _, names, _ in results)
    assert any(has_test for _, _, has_test in results)
    _assert_matches_float64(records[0], _float64_preprocessing(files, partition))


def _lying_peer(crypten, rank):
    """Rank 1 lies about the form of each message it sends; rank 0 reports what it refused."""
    from mpc.data.exchange import exchange
    from mpc.data.sharing import announced_statistics

    comm = crypten.communicator.get()
    if rank == 1:
        comm.recv_obj(0)
        comm.send_obj([b"\x00" * 8], 0)  # a secure-sum share of the wrong width
        exchange(comm, {"mean": ["1e15"], "std": [1.0]})  # column statistics that are not numbers
        return None
    refused = []
    for attempt in (lambda: secure_sum(comm, [1.0]),
                    lambda: announced_statistics(comm, np.zeros(1), np.ones(1), [["a"], ["b"]], ["bank0", "bank1"])):
        try:
            attempt()
        except ValueError as error:  # DataError is a ValueError
            refused.append(str(error))
    return refused


@pytest.mark.slow
def test_malformed_messages_from_a_peer_are_refused():
    refused, _ = run_parties(_lying_peer, world=2, timeout_s=600)
    assert len(refused) == 2
    assert "party rank 1 sent a malformed message" in refused[0]
    assert refused[1] == "bank1 announced malformed column statistics ('mean')"


def _float64_pipeline(files, partition: str, model_dir: Path, truncation: TruncationError) -> tuple[dict, dict]:
    """Held-out metrics of the same pipeline trained in float (scaling computed in float64 from
    the raw files), and mpc.tolerance's bound on each metric's distance to the secure run's."""
    pool = pool_horizontal if partition == "horizontal" else pool_vertical
    data = pool(CONFIG, _float64_preprocessing(files, partition), files.train, files.test)
    weights = ClassWeights.balanced(len(data.labels), int(data.labels.sum()))
    initial = build_torch_model(DEFAULT_MODEL, data.features.shape[1], seed=0)
    plain, _ = train_plaintext(initial, data, TRAIN, WeightedBinaryCrossEntropy(weights), seed=0)
    bound = training_weight_bound(data.features, data.labels, initial, TRAIN, weights, 0, SIGMOID_MAX_ERROR, truncation)
    secure_state = torch.load(model_dir / "model.pt", weights_only=True)["state_dict"]
    secure_theta = torch.cat([secure_state["0.weight"].reshape(-1), secure_state["0.bias"]]).double()
    plain_theta = torch.cat([p.detach().reshape(-1) for p in plain.parameters()]).double()
    assert (secure_theta - plain_theta).norm().item() <= bound.weight_error
    labels = data.test_labels.reshape(-1).double()
    with torch.no_grad():
        logits = plain(data.test_features).reshape(-1).double()
    tolerances = metric_tolerances(logits, labels, weights, logit_bounds(data.test_features, plain, bound))
    return evaluate(logits, labels, weights).as_dict(), tolerances


@pytest.mark.slow
@pytest.mark.parametrize("partition, parties, truncation", [("horizontal", 3, "topbits"), ("vertical", 2, "topbits"),
                                                              ("horizontal", 3, "local")])
def test_real_table_trains_like_float64(tmp_path, job, partition, parties, truncation):
    """Timestamps, tiny-variance and 1e12 columns, a constant and a renamed id column: the
    secure run matches the same pipeline in float64 on all four metrics within the bounds
    that follow from fixed point and the truncation's error (CrypTen's local truncation at
    three parties: up to 3 ulps either way, and wrong by 2^48 with probability |x| / 2^64, so the
    sigmoid's wide products are truncated before they add up)."""
    write = write_horizontal if partition == "horizontal" else write_vertical
    files = write(tmp_path / "tables", parties=parties, rows=200, test_rows=300)
    summary = job(f"num_parties={parties}", f"data.partition={partition}", parties_override(files),
                  *OVERRIDES, *TRAIN_OVERRIDES, f"protocol.truncation={truncation}")
    error = part_class("truncation", truncation).error_bound(parties)
    expected, bounds = _float64_pipeline(files, partition, tmp_path / "outputs" / "test" / "bank0", error)
    assert all(summary["gaps"][metric]["within_tolerance"] for metric in ("auc", "pr_auc", "accuracy", "loss"))
    for metric in ("auc", "pr_auc", "accuracy", "loss"):
        assert abs(summary["secure"][metric] - expected[metric]) <= bounds[metric], (metric, summary, expected, bounds)
    assert expected["auc"] > 0.75  # learnt from the tiny-variance and timestamp columns
    print(f"{partition}: secure {summary['secure']} float64 {expected} bounds {bounds}")


@pytest.mark.slow
def test_out_of_range_cell_stops_every_party_and_stays_private(tmp_path, capfd):
    files = write_horizontal(tmp_path / "tables", parties=3, rows=60, test_rows=60)
    frame = pd.read_csv(files.train[1])
    frame.loc[4, "amount"] = 1e15
    frame.to_csv(files.train[1], index=False)
    config = load_config([f"output_dir={tmp_path}", "num_parties=3", "protocol=tfp", "protocol.allow_insecure=true",
                          parties_override(files),
                          *OVERRIDES, "transport.connect_timeout_s=60", "transport.timeout_s=60"])
    started = time.monotonic()
    with pytest.raises(LaunchError):
        launch_local(config)
    assert time.monotonic() - started < 300
    err = capfd.readouterr().err
    problem = "column 'amount' has a value beyond the supported magnitude 2^40 (about 1.1e12) at data row 5"
    assert f"cotrain: party bank1 failed: DataError: bank1: {files.train[1]}: {problem}" in err, err
    for name in ("bank0", "bank2"):
        line = next(line for line in err.splitlines() if line.startswith(f"cotrain: party {name} failed:"))
        assert f"DataError: bank1: {problem}" in line
        assert files.train[1] not in line and "1e+15" not in line and "1000000000000000" not in line
