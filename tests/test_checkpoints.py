"""Secret-shared checkpoints: a run resumed from one continues bit for bit (under the test
suite's reproducible PRG seeds), and a checkpoint that does not belong to the run is refused."""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import PurePosixPath

import pytest
import torch

from launch.config import load_config
from mpc.checkpoint import (CheckpointError, agree_on_resume, checkpoint_path, load_checkpoint, run_settings,
                            save_checkpoint)
from protocols.prg import CipherStream
from sessions import config_refusal, run_parties

ROWS, FEATURES, CLASSES = 48, 5, 3


def _train(crypten, config, checkpoint=None, resume=None):
    """A two-layer multiclass model with Adam (moments and step count to carry) on fixed rows."""
    from torch import nn

    from mpc.data.sharing import SharedDataset
    from mpc.losses import SoftmaxCrossEntropy
    from mpc.models import encrypt_model
    from mpc.training import SecureTrainer

    generator = torch.Generator().manual_seed(5)
    x = torch.randn(ROWS, FEATURES, generator=generator)
    y = (x[:, :1] > 0).float() + (x[:, 1:2] > 0.5).float()
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(FEATURES, 4), nn.ReLU(), nn.Linear(4, CLASSES))
    secure = encrypt_model(crypten, model, FEATURES)
    data = SharedDataset(crypten.cryptensor(x, src=0), crypten.cryptensor(y, src=0), [], ROWS, [], -1)
    trainer = SecureTrainer(crypten, secure, config, SoftmaxCrossEntropy(CLASSES), seed=0,
                            stats=crypten.communicator.get().stats, show_progress=False)
    save = None if checkpoint is None else (lambda record: checkpoint(trainer.state_dict(record.epoch)))
    trainer.fit(data, None, on_epoch=save, resume=resume)
    return trainer.state_dict(config.epochs)


def _resume_in_session(directory, crypten, rank):
    """Two epochs straight; one epoch and a checkpoint; the second epoch resumed from it. Each
    run starts from fresh streams of the test seed, as a new session would."""
    from mpc.training import TrainConfig

    party = f"party{rank}"
    checkpoint_path(directory, party).parent.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(epochs=2, batch_size=24, lr=0.05, optimizer="adam")
    crypten._setup_prng()
    straight = _train(crypten, config)
    crypten._setup_prng()
    _train(crypten, dataclasses.replace(config, epochs=1),
           checkpoint=lambda state: save_checkpoint(checkpoint_path(directory, party), party, rank, 2, {}, state))
    crypten._setup_prng()
    saved = load_checkpoint(directory, party, rank, 2, {}, epochs=2)
    agree_on_resume(crypten, saved["epoch"], {})
    resumed = _train(crypten, config, resume=saved)
    try:  # party 1 lies about (or lost) an epoch: every party refuses
        agree_on_resume(crypten, saved["epoch"] + rank, {})
        refused = ""
    except CheckpointError as error:
        refused = str(error)
    return {"refused": refused,"parameters": all(torch.equal(straight["parameters"][k], resumed["parameters"][k])
                              for k in straight["parameters"]),
            "moments": torch.equal(straight["optimizer"]["moments"], resumed["optimizer"]["moments"]),
            "steps": (straight["optimizer"]["steps"], resumed["optimizer"]["steps"]),
            "streams": all(torch.equal(straight["generators"][k], resumed["generators"][k])
                           for k in straight["generators"])}


@pytest.mark.slow
def test_two_epochs_equal_one_epoch_and_a_resumed_one_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.setenv("COTRAIN_INSECURE_TEST_SEED", "7")
    for party in run_parties(partial(_resume_in_session, tmp_path), world=2,
                             timeout_s=300):
        assert "checkpoints do not belong together (epochs done per rank: [1, 2]" in party.pop("refused")
        assert party == {"parameters": True, "moments": True, "steps": (4, 4), "streams": True}


def _private_run(crypten, config, checkpoint=None, resume=None):
    """DP-SGD on a logistic regression over fixed rows; its privacy report."""
    from torch import nn

    from mpc.data.sharing import SharedDataset
    from mpc.losses import task_loss
    from mpc.models import encrypt_model
    from mpc.training import SecureTrainer

    generator = torch.Generator().manual_seed(6)
    x = torch.randn(ROWS, FEATURES, generator=generator)
    y = (x[:, :1] > 0.3).float()
    torch.manual_seed(2)
    secure = encrypt_model(crypten, nn.Linear(FEATURES, 1), FEATURES)
    data = SharedDataset(crypten.cryptensor(x, src=0), crypten.cryptensor(y, src=0), [], ROWS, [], int(y.sum()))
    trainer = SecureTrainer(crypten, secure, config, task_loss("binary", 2, ROWS, data.positive_count), seed=0,
                            stats=crypten.communicator.get().stats, show_progress=False)
    save = None if checkpoint is None else (lambda record: checkpoint(trainer.state_dict(record.epoch)))
    trainer.fit(data, None, on_epoch=save, resume=resume)
    return trainer.private.report(), trainer.state_dict(config.epochs)["dp"]


class _Stopped(Exception):
    """A run interrupted after a checkpoint."""


def _private_resume_in_session(directory, crypten, rank):
    """DP-SGD: a run of two epochs stopped after its first epoch's checkpoint, resumed from it."""
    from mpc.dp import DpConfig
    from mpc.training import TrainConfig

    party = f"party{rank}"
    checkpoint_path(directory, party).parent.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(epochs=2, batch_size=24, lr=0.2, dp=DpConfig(epsilon=3.0))

    def save_and_stop(state):  # the run stops (crashes) after its first epoch's checkpoint
        save_checkpoint(checkpoint_path(directory, party), party, rank, 2, {}, state)
        raise _Stopped(state["dp"])

    crypten._setup_prng()
    with pytest.raises(_Stopped) as stopped:
        _private_run(crypten, config, checkpoint=save_and_stop)
    saved_dp = stopped.value.args[0]
    crypten._setup_prng()
    resumed, resumed_dp = _private_run(crypten, config, resume=load_checkpoint(directory, party, rank, 2, {}, epochs=2))
    return {"saved": saved_dp, "resumed": resumed, "seed kept": resumed_dp["sampling_seed"] == saved_dp["sampling_seed"]}


@pytest.mark.slow
def test_a_private_run_resumed_continues_its_privacy_ledger_and_sampling(tmp_path):
    """The resumed run takes the steps taken, the epsilon after each epoch and the sampling
    seed back (the noise is fresh): it takes the planned steps, no more, and spends exactly
    the budget the noise multiplier was calibrated to over the two epochs."""
    for party in run_parties(partial(_private_resume_in_session, tmp_path), world=2, timeout_s=300):
        saved, resumed = party["saved"], party["resumed"]
        assert party["seed kept"] and saved["steps"] == 2
        assert resumed["steps_taken"] == resumed["steps_planned"] == 4
        assert resumed["epsilon_per_epoch"][0] == saved["epsilon_per_epoch"][0] < 3.0
        assert len(resumed["epsilon_per_epoch"]) == 2 and resumed["epsilon_spent"] == pytest.approx(3.0, rel=1e-3)


def test_a_private_run_resumes_only_with_the_epochs_its_noise_was_calibrated_to():
    assert _settings("train.epochs=2", "train.dp.epsilon=3") != _settings("train.epochs=5", "train.dp.epsilon=3")


def _settings(*overrides: str) -> dict[str, str]:
    return run_settings(dataclasses.asdict(load_config(list(overrides))))


def _saved(tmp_path, settings, epoch=1, party="bank0", rank=0, parties=3):
    path = checkpoint_path(tmp_path, party)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, party, rank, parties, settings, {"epoch": epoch, "parameters": {"w": torch.ones(2)}})
    return path


def test_settings_that_may_change_on_resume():
    base = _settings("train.epochs=2")
    assert _settings("train.epochs=5", "output_dir=elsewhere", "transport=gloo", "train.checkpoint_every=2") == base
    assert _settings("train.epochs=2", "train.schedule=cosine") != _settings("train.epochs=5", "train.schedule=cosine")
    assert base["train.lr"] == "0.5" and base["model._target_"] == '"mpc.zoo.LogisticRegression"'


@pytest.mark.parametrize("overrides, parties, message", [
    (["train.lr=0.1"], 3, "the checkpoint's run had train.lr=0.5, this run has train.lr=0.1"),
    (["model=mlp"], 3, 'had model._target_="mpc.zoo.LogisticRegression", this run has model._target_="mpc.zoo.MLP"'),
    ([], 2, "written by a run of 3 parties; this run has num_parties=2"),
])
def test_a_checkpoint_of_another_run_is_refused(tmp_path, overrides, parties, message):
    _saved(tmp_path, _settings())
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_checkpoint(tmp_path, "bank0", 0, parties, _settings(*overrides), epochs=5)


def test_missing_foreign_and_finished_checkpoints_are_refused(tmp_path):
    settings = _settings()
    with pytest.raises(CheckpointError, match="party bank0 has no checkpoint there"):
        load_checkpoint(tmp_path, "bank0", 0, 3, settings, epochs=5)
    _saved(tmp_path, settings, party="bank1", rank=1)
    with pytest.raises(CheckpointError, match="belongs to party bank1 \\(rank 1\\), not to bank1 \\(rank 2\\)"):
        load_checkpoint(tmp_path, "bank1", 2, 3, settings, epochs=5)
    _saved(tmp_path, settings, epoch=2)
    with pytest.raises(CheckpointError, match="after epoch 2, so train.epochs=2 leaves nothing to train"):
        load_checkpoint(tmp_path, "bank0", 0, 3, settings, epochs=2)
    # a file holding a pickled object (here harmless; it could run code) is not unpickled
    checkpoint_path(tmp_path, "bank2").parent.mkdir()
    foreign = {"format": "cotrain-checkpoint/1", "epoch": 1, "code": PurePosixPath("x")}
    torch.save(foreign, checkpoint_path(tmp_path, "bank2"))
    with pytest.raises(CheckpointError, match="is not a readable checkpoint"):
        load_checkpoint(tmp_path, "bank2", 2, 3, settings, epochs=5)


def test_a_save_that_fails_midway_keeps_the_previous_checkpoint(tmp_path):
    settings = _settings()
    path = _saved(tmp_path, settings, epoch=1)
    with pytest.raises(Exception):  # an unserialisable value stops torch.save halfway through the file
        save_checkpoint(path, "bank0", 0, 3, settings, {"epoch": 2, "parameters": {"w": torch.ones(2)},
                                                         "broken": lambda: None})
    assert load_checkpoint(tmp_path, "bank0", 0, 3, settings, epochs=5)["epoch"] == 1


@pytest.mark.parametrize("overrides, message", [
    (["train.checkpoint_every=-1"], "train.checkpoint_every=-1 must be 0 (never) or a number of epochs"),
    (["train.resume=/no/such/run"], "train.resume=/no/such/run is not a folder"),
])
def test_bad_checkpoint_settings_stop_before_any_party_starts(overrides, message):
    assert message in config_refusal(overrides)


@pytest.mark.parametrize("algorithm", ["aes_ctr", "chacha20"])
def test_a_prg_stream_seeks_forward_to_the_same_bytes_and_never_back(algorithm):
    whole = CipherStream(b"k" * 16, algorithm).read(5000)
    for position in (3, 15, 16, 17, 63, 64, 65, 4099):
        stream = CipherStream(b"k" * 16, algorithm)
        stream.read(3)
        stream.seek(position)
        assert stream.bytes_drawn == position and (stream.read(5000 - position) == whole[position:]).all()
    with pytest.raises(ValueError, match="cannot go back"):
        stream.seek(10)


@pytest.mark.slow
def test_cotrain_run_stopped_after_an_epoch_and_resumed_ends_as_the_uninterrupted_run(tmp_path, monkeypatch):
    """Through ``cotrain run``: one epoch with a checkpoint, then a run resumed from it for
    the second, against two epochs straight, under the test seed (protocol=tfp)."""
    from sessions import run_job

    monkeypatch.setenv("COTRAIN_INSECURE_TEST_SEED", "5")
    settings = ("num_parties=2", "protocol=tfp", "transport=gloo", "model=mlp", "model.hidden=[4]",
                "train.optimizer=adam", "train.lr=0.05", "data.rows=60", "data.test_rows=300", "train.batch_size=30",
                "train.plaintext_reference=false")
    straight = run_job(tmp_path / "straight", *settings, "train.epochs=2")
    first = run_job(tmp_path / "first", *settings, "train.epochs=1", "train.checkpoint_every=1")
    resumed = run_job(tmp_path / "resumed", *settings, "train.epochs=2", f"train.resume={tmp_path / 'first' / 'test'}")
    assert resumed["resumed"] == {"from": str(tmp_path / "first" / "test"), "after_epoch": 1}
    assert [e["epoch"] for e in first["per_epoch"]] == [1] and [e["epoch"] for e in resumed["per_epoch"]] == [2]
    for party in ("bank0", "bank1"):
        ends = [torch.load(tmp_path / run / "test" / party / "model_shares.pt", weights_only=True)
                for run in ("straight", "resumed")]
        assert ends[0].keys() == ends[1].keys() and all(torch.equal(ends[0][k], ends[1][k]) for k in ends[0])
    for metric in ("auc", "pr_auc", "accuracy", "loss"):
        assert resumed["secure"][metric] == straight["secure"][metric]
