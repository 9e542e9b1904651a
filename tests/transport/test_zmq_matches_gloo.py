"""The same seeded job over ZeroMQ and over gloo: bit-identical shares, identical results.

Share masks come from PRG seeds the parties draw at random; COTRAIN_INSECURE_TEST_SEED makes
those draws a function of the seed and the party's rank, so two runs are comparable. It
exists for this test only and makes every secret predictable.
"""

from __future__ import annotations

import pytest
import torch

from sessions import run_job

TIMING_AND_WIRE = {"job_wall_s", "command_wall_s", "training_s", "transport", "per_party", "per_epoch", "run_id",
                   "evaluator_bytes_per_epoch", "evaluator_bytes_per_row", "total_bytes_sent", "report"}  # gloo counts its ring all-reduce, zmq real frames


def run(tmp_path, monkeypatch, transport, *overrides):
    monkeypatch.setenv("COTRAIN_INSECURE_TEST_SEED", "7")
    summary = run_job(tmp_path / transport, f"transport={transport}", "protocol=tfp", *overrides)
    assert summary["insecure_test_seed"] == [party["name"] for party in summary["parties"]]
    root = tmp_path / transport / "test"
    shares = [torch.load(root / party["name"] / "model_shares.pt") for party in summary["parties"]]
    return summary, shares


@pytest.mark.slow
@pytest.mark.parametrize("parties, model", [(2, "logreg"), (3, "logreg"), (2, "mlp"), (3, "mlp")])
def test_zmq_and_gloo_give_bit_identical_shares(tmp_path, monkeypatch, parties, model):
    settings = (f"num_parties={parties}", f"model={model}", "data.rows=120", "data.test_rows=200",
                "train.epochs=1", "train.batch_size=60")
    zmq_summary, zmq_shares = run(tmp_path, monkeypatch, "zmq", *settings)
    gloo_summary, gloo_shares = run(tmp_path, monkeypatch, "gloo", *settings)
    for mine, theirs in zip(zmq_shares, gloo_shares):
        assert mine.keys() == theirs.keys()
        for name in mine:
            assert torch.equal(mine[name], theirs[name]), name
    strip = lambda summary: {k: v for k, v in summary.items() if k not in TIMING_AND_WIRE}  # noqa: E731
    assert strip(zmq_summary) == strip(gloo_summary)
    # the protocol's rounds agree; each transport's own session set-up (the hosts check, the
    # goodbye) may count one exchange more or less, which is wire bookkeeping, not protocol
    for zmq_party, gloo_party in zip(zmq_summary["per_party"], gloo_summary["per_party"]):
        assert abs(zmq_party["rounds"] - gloo_party["rounds"]) <= 1
