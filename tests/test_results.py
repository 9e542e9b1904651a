"""What a run leaves a bank: held-out predictions, a model file that scores raw rows, secure
scoring over the shares, and a summary that says when a run failed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from launch.cli import main
from launch.config import ConfigError
from launch.party_processes import core_share
from launch.predict import predict
from mpc.scoring import load_model_file
from mpc.tolerance import ULP, forward_error_bound

# the default suite (a dealer process; nothing testing-only), for training and for scoring
SMALL = ["num_parties=3", "data.rows=100", "data.test_rows=300", "train.epochs=1", "train.batch_size=100",
         "train.reveal_to=[bank1]"]


def _outputs_and_reveal(summary: dict, root: Path) -> None:
    for required in ("status", "run_id", "num_parties", "parties", "transport", "protocol", "model", "epochs",
                     "secure", "plaintext", "gaps", "job_wall_s", "command_wall_s", "per_party"):
        assert required in summary
    for metrics in (summary["secure"], summary["plaintext"]):
        assert set(metrics) >= {"auc", "pr_auc", "accuracy", "loss"}
    assert summary["status"] == "ok" and summary["command_wall_s"] >= summary["job_wall_s"] > 0
    assert summary["protocol"] == "dealer" and summary["testing_only_protocol"] is False
    assert summary["insecure_test_seed"] == []
    dealer = summary["per_party"][-1]  # the dealer's traffic is in the table and the total
    assert dealer["name"] == "dealer" and dealer["bytes_sent"] > 0
    assert summary["total_bytes_sent"] == sum(party["bytes_sent"] for party in summary["per_party"])
    # the four processes share this host's cores, unless OMP_NUM_THREADS says otherwise
    threads = int(os.environ.get("OMP_NUM_THREADS") or core_share(4))
    for party in summary["per_party"]:  # what each process cost, the dealer's too
        assert party["peak_rss_bytes"] > 2**20 and 0 < party["cpu_s"] <= summary["command_wall_s"] * os.cpu_count(), party
        assert party["threads"] == threads, party
    for rank in range(3):
        party = root / f"bank{rank}"
        assert (party / "model_shares.pt").is_file() and (party / "party.log").is_file()
        assert (party / "model.json").is_file() and (party / "model.pt").is_file() == (rank == 1)
        assert json.loads((party / "party.json").read_text())["name"] == f"bank{rank}"
    log = (root / "bank0" / "party.log").read_text()
    assert "for testing only" not in log and "on 1 host" in log
    shares = [torch.load(root / f"bank{rank}" / "model_shares.pt", weights_only=True) for rank in range(3)]
    revealed = torch.load(root / "bank1" / "model.pt", weights_only=True)["state_dict"]
    for name, total in zip(revealed, (sum(s[k] for s in shares) for k in shares[0])):
        decoded = total.double() / 2**16  # shares add up (mod 2^64) to the encoded weights
        assert torch.allclose(decoded, revealed[name].double(), atol=ULP)


@pytest.mark.slow
def test_outputs_reveal_and_predict_plain_and_over_shares(tmp_path, job):
    summary = job(*SMALL)
    root = tmp_path / "outputs" / "test"
    _outputs_and_reveal(summary, root)
    heldout = root / "data" / "heldout.csv"
    model_file = root / "bank1" / "model.pt"
    model, record = load_model_file(model_file)  # torch.load(weights_only=True) inside
    assert record.preprocessing.as_dict() == summary["preprocessing"]
    assert record.input_width == len(record.preprocessing.features) and record.kind == "logreg"

    # the plaintext path: the revealed model on the raw held-out rows (the evaluator's file)
    plain_out = tmp_path / "plain.csv"
    assert main(["predict", f"model={model_file}", f"data={heldout}", f"out={plain_out}"]) == 0
    plain = torch.tensor(pd.read_csv(plain_out)["logit"].to_numpy())
    revealed = torch.tensor(pd.read_csv(root / "bank0" / "heldout_predictions.csv")["logit"].to_numpy())
    # both are the same weights on the same rows: one forward pass in the ring against one in float
    rows = record.preprocessing.transform(pd.read_csv(heldout))
    bound = forward_error_bound(model, rows.abs().max().item()) + ULP  # + the CSV's 9 digits
    assert len(plain) == len(revealed) == 300
    assert (plain - revealed).abs().max().item() <= bound

    # the secure path: bank2 owns the rows; the parties score them with their shares only
    shared_out = tmp_path / "shared.csv"
    code = main(["predict", f"shares={root}", f"data={heldout}", "owner=bank2", f"out={shared_out}",
                 "transport.timeout_s=120", "transport.connect_timeout_s=120"])
    assert code == 0
    shared = torch.tensor(pd.read_csv(shared_out)["logit"].to_numpy())
    difference = (shared - plain).abs().max().item()
    assert difference <= bound, (difference, bound)
    print(f"predict vs held-out logits {(plain - revealed).abs().max().item():.2e}, "
          f"secure vs plain {difference:.2e} (bound {bound:.2e})")
    # the scores went through the release gate: one more entry in every party's chain, the
    # digest at the owner only, and the logs still agree
    assert main(["audit", str(root)]) == 0
    last = {rank: json.loads((root / f"bank{rank}" / "audit.jsonl").read_text().splitlines()[-1])
            for rank in range(3)}
    assert all((e["what"], e["to"], e["shape"]) == ("scores", ["bank2"], [300, 1]) for e in last.values())
    assert [e["digest"] is not None for e in last.values()] == [False, False, True]
    # a policy that does not give the scores to the owner stops before any party starts
    with pytest.raises(ConfigError, match=r"release: opening 'scores' to bank2 is refused by the release policy: "
                                          r"release\[5\] \{what: scores, to: \[bank0\]\} allows bank0"):
        predict([f"shares={root}", f"data={heldout}", "owner=bank2", f"out={shared_out}", "release.5.to=[bank0]"])


def test_a_failed_run_leaves_a_failed_summary_and_each_party_says_why(tmp_path, capfd):
    good = tmp_path / "good.csv"
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"amount": [1.0, 2.0, 3.0, 4.0], "is_fraud": [0, 1, 0, 1]}).to_csv(good, index=False)
    pd.DataFrame({"amount": ["x", "2", "3", "4"], "is_fraud": [0, 1, 0, 1]}).to_csv(bad, index=False)
    output = tmp_path / "outputs"
    code = main(["run", f"output_dir={output}", "run_id=broken", "num_parties=2", "protocol=tfp",
                 "protocol.allow_insecure=true",
                 f"parties=[{{name:alpha,data:{good}}},{{name:beta,data:{bad}}}]", "transport.timeout_s=60",
                 "transport.connect_timeout_s=60", "launch.timeout_s=300"])
    assert code == 1
    summary = json.loads((output / "broken" / "summary.json").read_text())
    assert summary["status"] == "failed" and "failed" in summary["reason"]
    assert set(summary["party_reasons"]) == {"alpha", "beta"}
    assert "DataError" in summary["party_reasons"]["beta"] and summary["command_wall_s"] > 0
    for party in ("alpha", "beta"):
        assert "aborted: DataError" in (output / "broken" / party / "party.log").read_text()
