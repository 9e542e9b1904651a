"""``cotrain run protocol=malicious``: the default job's path end to end (small data)."""

from __future__ import annotations

import json

import pytest

from launch.cli import main


@pytest.mark.slow
def test_malicious_logreg_job(job, tmp_path):
    summary = job("protocol=malicious", "data.rows=200", "data.test_rows=300", "train.epochs=2",
                  "train.reveal_to=[bank1]")
    run_dir = tmp_path / "outputs" / "test"
    # every reveal went through the release gate: the parties' audit logs agree, entry by entry
    assert main(["audit", str(run_dir)]) == 0
    logs = {name: [json.loads(line) for line in (run_dir / name / "audit.jsonl").read_text().splitlines()]
            for name in ("bank0", "bank1", "bank2")}
    everyone = ["bank0", "bank1", "bank2"]
    assert [(e["what"], e["to"], e["step"]) for e in logs["bank0"]] == [
        ("scaling_statistics", everyone, 1), ("heldout_predictions", ["bank0"], 1),
        ("heldout_predictions", ["bank0"], 2), ("model", ["bank1"], 1)]
    assert logs["bank0"][0]["shape"] == [1, 2 * len(summary["preprocessing"]["features"]) + 1]
    assert logs["bank0"][1]["shape"] == [300, 1]
    # a value's digest only where the party learned it
    assert [e["digest"] is not None for e in logs["bank1"]] == [True, False, False, True]
    assert [e["digest"] is not None for e in logs["bank0"]] == [True, True, True, False]
    assert summary["report"] == str(run_dir / "report.html")
    assert all((run_dir / picture).is_file() for picture in ("roc.png", "precision_recall.png", "per_epoch.png",
                                                              "traffic.png", "report.html"))
    assert summary["protocol"] == "malicious"
    assert summary["protocol_parts"]["triple_source"].startswith("authenticated dealer")
    assert summary["secure"] is not None and summary["plaintext"] is not None
    assert abs(summary["gaps"]["auc"]["gap"]) < 0.05
    saved = {p["name"]: p["saved"] for p in summary["per_party"]}
    assert saved.pop("dealer") == {}  # the dealer's traffic is in the table; it saves nothing
    assert "revealed" in saved["bank1"] and "revealed" not in saved["bank0"]
    assert all("shares" in s for s in saved.values())


@pytest.mark.slow
def test_malicious_mlp_job(job):
    summary = job("protocol=malicious", "model=mlp", "model.hidden=[4]", "data.rows=80", "data.test_rows=100",
                  "train.epochs=1", "train.batch_size=64", "train.reveal_to=[bank0]")
    assert summary["model"] == "mpc.zoo.MLP" and summary["secure"] is not None
    assert "revealed" in summary["per_party"][0]["saved"]

