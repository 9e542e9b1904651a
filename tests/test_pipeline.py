"""One real DP-SGD job, then its audit logs, its privacy ledger and its report.

The job runs 2 parties over 600 training rows in batches of 64 (q = 0.107, 10 steps an
epoch) with noise multiplier 1.0 and a budget of epsilon 4.1: the accountant allows 14 of
the 20 planned steps, so training stops 4 steps into the second epoch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from launch.cli import main
from mpc.dp import Ledger
from sessions import run_job

EPSILON, SIGMA, DELTA = 4.1, 1.0, 1e-5
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("pipeline") / "outputs"
    summary = run_job(output, "protocol=tfp", "num_parties=2", "data.rows=300", "data.test_rows=300",
                      "train.epochs=2", "train.batch_size=64", "train.reveal_to=[bank0]",
                      f"train.dp.epsilon={EPSILON}", f"train.dp.noise_multiplier={SIGMA}", f"train.dp.delta={DELTA}")
    return output / "test", summary


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


@pytest.mark.slow
def test_audit_verifies_a_real_run(run, capsys):
    run_dir, _ = run
    assert main(["audit", str(run_dir)]) == 0
    assert "every chain is intact and the logs agree" in capsys.readouterr().out
    entries = [json.loads(line) for line in _lines(run_dir / "bank1" / "audit.jsonl")]
    opened = [(e["what"], tuple(e["to"]), e["step"]) for e in entries]
    assert opened[:3] == [("scaling_statistics", ("bank0", "bank1"), 1), ("scaling_statistics", ("bank0", "bank1"), 2),
                          ("heldout_labels", ("bank0",), 1)]
    assert [o for o in opened if o[0] == "heldout_predictions"] == [("heldout_predictions", ("bank0",), 1),
                                                                    ("heldout_predictions", ("bank0",), 2)]
    assert {o[:2] for o in opened[-2:]} == {("model", ("bank0",))}  # weight and bias
    # bank1 learns what is opened to all and records its digest; of the rest, only the shape
    assert all((e["digest"] is not None) == ("bank1" in e["to"]) for e in entries)
    bank0 = [json.loads(line) for line in _lines(run_dir / "bank0" / "audit.jsonl")]
    assert all(e["digest"] is not None for e in bank0)


def _tampered(run_dir: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    log = copy / "bank1" / "audit.jsonl"
    lines = _lines(log)
    log.write_text("\n".join(edit(lines)) + "\n")
    return copy


def _edit_step(lines: list[str]) -> list[str]:
    entry = json.loads(lines[4])
    entry["step"] += 1
    return lines[:4] + [json.dumps(entry, sort_keys=True)] + lines[5:]


def _rechain(lines: list[str]) -> list[str]:
    """Edit entry 3's recipients and recompute every hash after it: an intact, false chain."""
    from mpc.audit import GENESIS, entry_hash

    entries = [json.loads(line) for line in lines]
    entries[2]["to"] = ["bank0", "bank1"]
    previous = GENESIS
    for entry in entries:
        entry["prev"] = previous
        entry["hash"] = previous = entry_hash(entry)
    return [json.dumps(entry, sort_keys=True) for entry in entries]


@pytest.mark.slow
@pytest.mark.parametrize("edit, message", [
    (_edit_step, "bank1: entry 5 (heldout_predictions to bank0 shape [300, 1] step 3): its hash does not match"),
    (lambda lines: lines[:3] + lines[4:], "bank1: entry 4 (heldout_predictions to bank0 shape [300, 1] step 2): "
                                          "does not follow entry 3"),
    (lambda lines: lines[:3] + [lines[4], lines[3]] + lines[5:], "bank1: entry 4 (heldout_predictions to bank0 "
                                                                 "shape [300, 1] step 2): does not follow entry 3"),
    (lambda lines: lines[:-1], "entry 7 differs: bank0 logged model to bank0 shape [1] step 2, bank1's log ends"),
    (_rechain, "entry 3 differs: bank0 logged heldout_labels to bank0 shape [300, 1] step 1, bank1 logged "
               "heldout_labels to bank0,bank1"),
], ids=["edited", "dropped", "reordered", "truncated", "rechained"])
def test_audit_names_the_entry_that_differs(run, tmp_path, capsys, edit, message):
    copy = _tampered(run[0], tmp_path, edit)
    assert main(["audit", str(copy)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and message in out, out


@pytest.mark.slow
def test_privacy_spent_per_epoch_and_stop_at_budget(run):
    _, summary = run
    privacy = summary["privacy"]
    ledger = Ledger(64 / 600, SIGMA, DELTA)
    assert privacy["steps_planned"] == 20 and privacy["steps_taken"] == 14 and privacy["stopped_at_budget"]
    assert privacy["epsilon_per_epoch"] == pytest.approx([ledger.epsilon(10), ledger.epsilon(14)], rel=1e-12)
    assert privacy["epsilon_spent"] <= EPSILON < ledger.epsilon(15)
    assert [record["epsilon"] for record in summary["per_epoch"]] == privacy["epsilon_per_epoch"]
    # the evaluator still scores the model after the shortened epoch, as does the reference
    assert len(summary["secure"]["auc_curve"]) == 2
    for key in ("auc", "pr_auc", "accuracy", "loss"):
        assert summary["secure"][key] == summary["secure"][key]  # not NaN


@pytest.mark.slow
def test_report_pictures_and_page(run):
    run_dir, summary = run
    page = Path(summary["report"])
    assert page == run_dir / "report.html"
    for name in ("roc", "precision_recall", "per_epoch", "traffic"):
        picture = run_dir / f"{name}.png"
        assert picture.read_bytes()[:8] == PNG_MAGIC and picture.stat().st_size > 10_000
    text = page.read_text()
    assert text.count('src="data:image/png;base64,') == 4
    assert "<th>secure</th>" in text and "<th>plaintext</th>" in text and f"{summary['secure']['auc']:.4f}" in text
    assert "DP-SGD" in text and "testing only" in text
