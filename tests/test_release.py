"""The release gate: what the policy does not name is refused, before anything is opened."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch

from sessions import config_refusal, run_parties


def _gate_session(crypten, rank, directory):
    from pathlib import Path

    from mpc import release
    from mpc.audit import AuditLog
    from mpc.release import ReleaseGate, ReleasePolicy, ReleaseRefused, default_release

    names = ("bank0", "bank1")
    policy = ReleasePolicy(default_release(), names, evaluator=0, reveal_to=["bank0"])
    log = Path(directory) / f"{names[rank]}.jsonl"
    value = crypten.cryptensor(torch.tensor([1.5, -2.25]), src=0)
    refusals = {}
    try:
        release.open(value, "model", to=0)
    except ReleaseRefused as error:
        refusals["no gate"] = str(error)
    with release.enforced(ReleaseGate(policy, rank, AuditLog(log))):
        opened = release.open(value, "model", to=0)
        for label, what, to in (("model to bank1", "model", 1), ("unnamed value", "gradients", None),
                                ("predictions to all", "heldout_predictions", None),
                                ("scores outside scoring", "scores", 1)):
            try:
                release.open(value, what, to=to)
            except ReleaseRefused as error:
                refusals[label] = str(error)
    return {"opened": None if opened is None else opened.tolist(), "refusals": refusals,
            "log": [json.loads(line) for line in log.read_text().splitlines()]}


def test_the_gate_refuses_what_the_policy_does_not_name(tmp_path):
    bank0, bank1 = run_parties(partial(_gate_session, directory=str(tmp_path)), world=2, timeout_s=600)
    assert bank0["opened"] == [1.5, -2.25] and bank1["opened"] is None
    for party in (bank0, bank1):
        refusals = party["refusals"]
        assert refusals["no gate"] == "opening 'model' is refused: no release policy is in force in this process"
        assert refusals["model to bank1"] == ("opening 'model' to bank1 is refused by the release policy: "
                                              "release[4] {what: model, to: [reveal_to]} allows bank0")
        assert refusals["unnamed value"].startswith("opening 'gradients' to bank0, bank1 is refused: "
                                                    "no release line names 'gradients'")
        assert refusals["predictions to all"] == (
            "opening 'heldout_predictions' to bank1 is refused by the release policy: "
            "release[3] {what: heldout_predictions, to: [evaluator]} allows bank0")
        assert refusals["scores outside scoring"] == (
            "opening 'scores' to bank1 is refused by the release policy: "
            "release[5] {what: scores, to: [score_owner]} allows nobody")
        # only the allowed opening reached the log; the refused ones never ran
        assert [(e["what"], e["to"]) for e in party["log"]] == [("model", ["bank0"])]
    assert bank0["log"][0]["digest"] and bank1["log"][0]["digest"] is None


@pytest.mark.parametrize("overrides, message", [
    (["train.reveal_to=[bank1]", "release=[{what:model,to:[bank0]}]"],
     "release: opening 'scaling_statistics' to bank0, bank1, bank2 is refused: no release line names"),
    (["train.reveal_to=[bank1]", "release.4.to=[bank0]"],
     "release: opening 'model' to bank1 is refused by the release policy: release[4] {what: model, to: [bank0]}"),
    (["release.0.what=weights"], "release: release[0] {what: weights, to: [all]}: 'weights' is not a value"),
    (["release.3.to=[bank7]"], "release: release[3] {what: heldout_predictions, to: [bank7]}: 'bank7' is neither"),
    (["train.dp.epsilon=1", "model=mlp"], "train.dp needs model=logreg"),
    (["train.dp.epsilon=1", "train.dp.delta=2"], "train.dp.delta=2.0 must be in (0, 1)"),
])
def test_policy_and_dp_settings_are_checked_before_any_party_starts(overrides, message):
    assert message in config_refusal(overrides)
