"""Bad input at one party stops every party with a clear error, within the timeouts."""

from __future__ import annotations

import dataclasses

import random
import re
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.kill_trials import LAUNCHERS, kill_trial
from launch.config import load_config
from launch.demo_data import with_demo_data
from launch.local import LaunchError, free_port, launch_local
from launch.party_processes import party_context, start_party
from parties.entry import party_main

FAST = ["protocol=tfp", "data.rows=60", "data.test_rows=200", "train.epochs=1", "train.batch_size=60",
        "transport.connect_timeout_s=20", "transport.timeout_s=20", "launch.grace_s=20"]


def demo_config(tmp_path: Path, *overrides: str):
    config = load_config([f"output_dir={tmp_path}", *FAST, *overrides])
    return with_demo_data(dataclasses.replace(config, parties=[]), "fail")


def corrupt(config, rank: int, edit) -> None:
    path = Path(config.parties[rank].data)
    frame = pd.read_csv(path)
    edit(frame, path)


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda f, p: p.unlink(), "data file not found"),
        (lambda f, p: f.drop(columns=["hour"]).to_csv(p, index=False), "schema mismatch: bank1 lacks column 'hour'"),
        (lambda f, p: f.rename(columns={"hour": "hr"}).to_csv(p, index=False), "schema mismatch: bank1 lacks column 'hour'"),
        (lambda f, p: f.assign(amount=f["amount"].astype(object).where(f.index != 3, "12,5x")).to_csv(p, index=False),
         "column 'amount' has a non-numeric value at data row 4"),
        (lambda f, p: f.assign(hour=f["hour"].where(f.index != 7)).to_csv(p, index=False),
         "column 'hour' has a missing or infinite value at data row 8"),
        (lambda f, p: f.iloc[:0].to_csv(p, index=False), "the table has a header but no rows"),
        (lambda f, p: p.write_text(""), "the file is empty"),
        (lambda f, p: f.assign(is_fraud=2).to_csv(p, index=False),
         "label column 'is_fraud' (data.label) must hold only 0 and 1, data row 1 does not"),
    ],
    ids=["missing-file", "missing-column", "wrong-column", "non-numeric", "nan", "no-rows", "empty-file", "bad-label"],
)
def test_bad_table_at_one_party_stops_all(tmp_path, capfd, edit, problem):
    config = demo_config(tmp_path, "num_parties=3")
    corrupt(config, 1, edit)
    started = time.monotonic()
    with pytest.raises(LaunchError):
        launch_local(config)
    assert time.monotonic() - started < 60
    err = capfd.readouterr().err
    path = config.parties[1].data
    # every party reports the same cause; only bank1 itself names its file (and the cell)
    owner = problem if problem.startswith("schema") else f"bank1: {path}: {problem}"
    assert f"cotrain: party bank1 failed: DataError: {owner}" in err, err
    for name in ("bank0", "bank2"):
        line = next(line for line in err.splitlines() if line.startswith(f"cotrain: party {name} failed:"))
        expected = problem if problem.startswith("schema") else f"bank1: {problem}"
        assert line.startswith(f"cotrain: party {name} failed: DataError: {expected}"), err
        assert path not in line and "12,5x" not in line


def test_vertical_rows_out_of_order_are_refused(tmp_path, capfd):
    config = demo_config(tmp_path, "num_parties=2", "data.partition=vertical")
    corrupt(config, 1, lambda f, p: f.iloc[::-1].to_csv(p, index=False))
    with pytest.raises(LaunchError):
        launch_local(config)
    err = capfd.readouterr().err
    problem = "the 'id' column (data.id_column) of its training table does not match bank0's"
    assert f"cotrain: party bank0 failed: DataError: bank1: {problem}" in err, err
    assert f"cotrain: party bank1 failed: DataError: bank1: {config.parties[1].data}: {problem}" in err, err


def test_party_that_never_starts(tmp_path, capfd):
    config = demo_config(tmp_path, "num_parties=3", "transport=gloo", "transport.connect_timeout_s=4")
    config = dataclasses.replace(config, transport=dataclasses.replace(config.transport, master_port=free_port()))
    context = party_context()
    started = time.monotonic()
    present = [start_party(context, party_main, (config, rank), f"bank{rank}") for rank in (0, 1)]
    for process in present:
        process.join(60)
    assert [p.exitcode for p in present] == [1, 1]
    assert time.monotonic() - started < 40
    err = capfd.readouterr().err
    assert "party 2 (bank2) never joined the gloo group" in err


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_killed_party_is_named_by_every_survivor(launcher: str) -> None:
    """SIGKILL one bank mid-training (bench/kill_trials.py does this 10 times per launcher)."""
    trial = kill_trial(launcher, random.Random(0), victim="bank1")
    assert trial.exit_codes and all(trial.exit_codes), (trial.exit_codes, trial.output[-3000:])
    if launcher in ("local", "host"):  # zmq: every survivor finds out itself
        assert not trial.unnamed, (trial.unnamed, trial.output[-3000:])  # bank0, bank2, the dealer
    else:  # gloo and MPI: the peer watch races the launcher's own stop (see the kill-trials bench)
        assert len(trial.unnamed) < 3 or re.search(r"first to end: [^)]*bank1", trial.output), trial.output[-3000:]
    assert not trial.orphans, trial.orphans
    # the bound is 10 s (bench/kill_trials.py measures it); twice that leaves room for a loaded CI machine
    assert trial.seconds < 20, (trial.seconds, trial.output[-3000:])


@pytest.mark.slow
def test_a_data_error_ends_the_malicious_dealer_at_once(tmp_path, capfd):
    """The dealer learns the parties are gone and stops on its own, before launch.grace_s ends:
    the parties' secure session tells it goodbye as it closes on their error."""
    config = demo_config(tmp_path, "num_parties=2", "protocol=malicious", "launch.grace_s=60",
                         "transport.timeout_s=60")
    corrupt(config, 1, lambda f, p: f.assign(is_fraud=2).to_csv(p, index=False))
    started = time.monotonic()
    with pytest.raises(LaunchError, match="failed"):
        launch_local(config)
    # the launcher waits launch.grace_s for the others to end before it kills them
    assert time.monotonic() - started < 60, capfd.readouterr().err[-3000:]
