"""``cotrain run protocol=malicious``: the default job's path end to end (small data)."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_malicious_logreg_job(job):
    summary = job("protocol=malicious", "data.rows=200", "data.test_rows=300", "train.epochs=2",
                  "train.reveal_to=[bank1]")
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

