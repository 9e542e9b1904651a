"""Party-side programs for the malicious suite's checkpoints and DP noise (importable by
spawned processes): SecureTrainer's state saved with its MACs and MAC key share, the dealer's
key kept and taken back by the production ``parties.dealer.make_maker``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from mpc.checkpoint import CheckpointError, checkpoint_path, load_checkpoint, save_checkpoint
from mpc.data.sharing import SharedDataset
from mpc.dp import joint_gaussian
from mpc.losses import task_loss
from mpc.models import build_torch_model, encrypt_model
from mpc.training import SecureTrainer, TrainConfig
from protocols.malicious.engine import CheatDetected
from protocols.prg import CipherStream, new_seed
from tensor_programs import malicious_session
from train_programs import make_data

ROWS, WIDTH = 8, 3  # per party: 2 steps of 8 rows per epoch


def run_maker(parties: int, authenticated: bool, config: Any, directory: str) -> Any:
    """The dealer process's maker, as ``cotrain run`` makes it for the run ``config``."""
    from parties.dealer import make_maker

    Path(directory).mkdir(parents=True, exist_ok=True)  # the dealer's folder, as a run makes it
    return make_maker(config, Path(directory))


def _trainer(crypten: Any, transport: Any, parties: int, epochs: int) -> tuple[SecureTrainer, SharedDataset]:
    """Logistic regression with momentum (buffers to carry) on every party's rows."""
    xs, ys = make_data(parties, ROWS, WIDTH)
    features = crypten.cat([crypten.cryptensor(torch.tensor(x), src=owner) for owner, x in enumerate(xs)])
    labels = crypten.cat([crypten.cryptensor(torch.tensor(y).reshape(-1, 1), src=owner) for owner, y in enumerate(ys)])
    total = ROWS * parties
    train = SharedDataset(features, labels, [f"x{i}" for i in range(WIDTH)], total, [], int(sum(y.sum() for y in ys)))
    model = encrypt_model(crypten, build_torch_model({"_target_": "mpc.zoo.LogisticRegression"}, WIDTH, seed=0), WIDTH)
    trainer = SecureTrainer(crypten, model, TrainConfig(epochs=epochs, batch_size=8, lr=0.5, momentum=0.9),
                            task_loss("binary", 2, total, train.positive_count), 0, transport.stats, show_progress=False)
    return trainer, train


def train_and_save(transport: Any, rank: int, parties: int, settings: Mapping[str, str], run_dir: str,
                   draws: int, std: float) -> dict:
    """One epoch, then this party's checkpoint in ``run_dir``; then ``draws`` values of DP-SGD's
    joint noise, opened (MAC-checked), with this party's own draw."""
    name = f"party{rank}"
    path = checkpoint_path(run_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with malicious_session(transport, parties) as crypten:
        trainer, train = _trainer(crypten, transport, parties, epochs=1)
        trainer.fit(train, None, on_epoch=lambda record: save_checkpoint(path, name, rank, parties, settings,
                                                                          trainer.state_dict(record.epoch)))
        noise, own = joint_gaussian(crypten, train.features, (draws,), std, CipherStream(new_seed()))
        return {"noise": noise.get_plain_text().tolist(), "own": own.tolist()}


def resume(transport: Any, rank: int, parties: int, settings: Mapping[str, str], run_dir: str,
           refused_dirs: Sequence[str] = ()) -> dict:
    """Take this party's checkpoint back and train the second epoch: whether the state read back
    is the saved one, bit for bit, and the trained weights (revealed to all). The run folders
    ``refused_dirs`` are tried first, in one session with the good one: the error each stopped
    every party with (the test suite may go on after an abort; a run may not)."""
    refusals = []
    with malicious_session(transport, parties) as crypten:
        trainer, train = _trainer(crypten, transport, parties, epochs=2)
        for folder in refused_dirs:
            try:
                trainer.load_state_dict(load_checkpoint(folder, f"party{rank}", rank, parties, settings, epochs=2))
                refusals.append("")
            except (CheatDetected, CheckpointError) as error:
                refusals.append(f"{type(error).__name__}: {error}")
        saved = load_checkpoint(run_dir, f"party{rank}", rank, parties, settings, epochs=2)
        done = trainer.load_state_dict(saved)
        restored = trainer.state_dict(done)
        same = (set(restored) == {"epoch", "parameters", "optimizer", "generators", "mac_key"}
                and all(torch.equal(restored["parameters"][k], saved["parameters"][k]) for k in saved["parameters"])
                and all(torch.equal(restored["optimizer"][k], saved["optimizer"][k]) for k in saved["optimizer"])
                and all(torch.equal(restored["generators"][k], saved["generators"][k]) for k in saved["generators"])
                and torch.equal(restored["mac_key"], saved["mac_key"]))
        trainer.fit(train, None, resume=saved)
        weights = [float(v) for p in trainer.model.parameters() for v in p.get_plain_text().reshape(-1)]
    return {"refusals": refusals, "restored": same, "epoch": done, "weights": weights}
