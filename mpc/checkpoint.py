"""Secret-shared checkpoints: each party saves its own shares of the training state and
resumes from them.

A checkpoint holds this party's shares of the weights and of the optimizer state, the epochs
done, the positions of its PRG streams (never their keys) and the settings of the run that
wrote it; under protocol=malicious the shares carry their MACs, and the checkpoint this
party's share of the MAC key, while the dealer keeps the key's sharing in its own
checkpoint, so that the resumed run is greeted with the same shares of the same key. It
is a ``torch.save`` of tensors, numbers and strings only, read back with
``weights_only=True`` (no pickled objects), readable by its owner only, and written to a
temporary name then renamed, so a crash while saving leaves the previous checkpoint whole.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = "cotrain-checkpoint/1"
# Settings a resumed run may change: where it writes, how it is launched and talks, how often
# it checkpoints, who finally receives the model, and (without a cosine schedule, whose rates
# depend on it) how many epochs it runs in all. The demo data files are regenerated per run
# id, so the parties' file paths may change too (their names may not).
_MAY_CHANGE = ("run_id", "output_dir", "log_level", "party", "launch", "score", "transport", "device",
               "train.resume", "train.checkpoint_every", "train.reveal_to", "train.plaintext_reference")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or from a run this one cannot continue."""


def _flatten(value: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(value, Mapping):
        flat: dict[str, str] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: json.dumps(value, sort_keys=True)}


def run_settings(config: Mapping[str, Any]) -> dict[str, str]:
    """The settings that must match for a run to continue another's checkpoint, flattened
    to ``{'train.lr': '0.5', ...}`` (``config`` as a plain nested mapping)."""
    config = dict(config)
    config["parties"] = [party["name"] for party in config.get("parties", [])]
    settings = _flatten(config)
    schedule = json.loads(settings.get("train.schedule", '"constant"'))
    private = json.loads(settings.get("train.dp.epsilon", "null")) is not None
    # the cosine schedule's rates and DP-SGD's noise (calibrated to the planned steps) depend on it
    ignored = _MAY_CHANGE + (() if schedule == "cosine" or private else ("train.epochs",))
    return {key: value for key, value in settings.items()
            if not any(key == name or key.startswith(name + ".") for name in ignored)}


def settings_digest(settings: Mapping[str, str]) -> int:
    """A 63-bit digest of the settings, for the parties to check they resume the same run."""
    text = json.dumps(dict(settings), sort_keys=True).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1


def checkpoint_path(run_dir: str | Path, party: str) -> Path:
    return Path(run_dir) / party / CHECKPOINT_FILE


def save_checkpoint(path: Path, party: str, rank: int, num_parties: int, settings: Mapping[str, str],
                    state: Mapping[str, Any]) -> None:
    """Write ``state`` (SecureTrainer.state_dict()) with the run's identity, atomically."""
    payload = {"format": FORMAT, "party": party, "rank": rank, "num_parties": num_parties,
               "settings": dict(settings), **state}
    save_private(path, payload)


def save_private(path: Path, payload: Any) -> None:
    """``torch.save`` secret shares (or a MAC key's sharing) into a file created readable by its
    owner only, through a temporary name, atomically."""
    temporary = path.with_name(path.name + ".partial")
    with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as file:
        torch.save(payload, file)
    os.replace(temporary, path)


def load_checkpoint(run_dir: str | Path, party: str, rank: int, num_parties: int,
                    settings: Mapping[str, str], epochs: int) -> dict[str, Any]:
    """This party's checkpoint from the run folder ``run_dir`` (``train.resume``), refused with
    the setting that differs if it was written by another party, party count or configuration,
    or if it leaves no epoch to train."""
    payload = read_checkpoint(run_dir, party, rank, num_parties, settings)
    if payload["epoch"] >= epochs:
        raise CheckpointError(f"train.resume={run_dir}: the checkpoint is after epoch {payload['epoch']}, so "
                              f"train.epochs={epochs} leaves nothing to train; set train.epochs to the total wanted")
    return payload


def read_checkpoint(run_dir: str | Path, party: str, rank: int, num_parties: int,
                    settings: Mapping[str, str] | None, where: str | None = None) -> dict[str, Any]:
    """The checkpoint process ``party`` (rank ``rank``: a party, or the dealer) wrote in
    ``run_dir``, refused as :func:`load_checkpoint` says, epochs aside; with ``settings`` None
    whatever the settings of its run (scoring a run's shares: the dealer's MAC key), and
    ``where`` naming the setting that pointed here (``train.resume`` unless given)."""
    path = checkpoint_path(run_dir, party)
    where = where or f"train.resume={run_dir}"
    if not path.is_file():
        raise CheckpointError(f"{where}: party {party} has no checkpoint there ({path}); a run writes one "
                              "every train.checkpoint_every epochs (a protocol=malicious run's dealer: always)")
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # a truncated or foreign file: say which
        raise CheckpointError(f"{where}: {path} is not a readable checkpoint ({type(error).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{where}: {path} is not a {FORMAT} checkpoint")
    if payload["num_parties"] != num_parties:
        raise CheckpointError(f"{where}: the checkpoint was written by a run of {payload['num_parties']} parties; "
                              f"this run has num_parties={num_parties}")
    if payload["party"] != party or payload["rank"] != rank:
        raise CheckpointError(f"{where}: {path} belongs to party {payload['party']} (rank {payload['rank']}), "
                              f"not to {party} (rank {rank})")
    saved: dict[str, str] = payload["settings"]
    for key in sorted(set(saved) | set(settings)) if settings is not None else ():
        if saved.get(key) != settings.get(key):
            raise CheckpointError(f"{where}: the checkpoint's run had {key}={_shown(saved.get(key))}, this run has "
                                  f"{key}={_shown(settings.get(key))}; a run continues only under the same settings")
    return payload


def _shown(value: str | None) -> str:
    return "(unset)" if value is None else value


def agree_on_resume(crypten: Any, epoch: int, settings: Mapping[str, str]) -> None:
    """Every party checks that all of them resume from the same epoch of the same run (a
    crash between two parties' saves leaves their checkpoints an epoch apart)."""
    mine = torch.tensor([epoch, settings_digest(settings)], dtype=torch.int64)
    everyone = crypten.communicator.get().all_gather(mine)
    epochs = [int(values[0]) for values in everyone]
    if any(not torch.equal(values, everyone[0]) for values in everyone):
        raise CheckpointError(f"train.resume: the parties' checkpoints do not belong together (epochs done per "
                              f"rank: {epochs}; settings agree: {len({int(v[1]) for v in everyone}) == 1}); "
                              "resume from a run folder where every party saved the same epoch")


def agree_on_mac_key(crypten: Any, saved: torch.Tensor | None, current: torch.Tensor,
                     where: str = "train.resume") -> None:
    """Under protocol=malicious: every party checks that the dealer greeted this run with the
    share of the MAC key it saved with its shares (the saved MACs hold only under that key),
    and all stop, naming the parties whose share differs, if any does. ``where``: the setting
    that named the saved shares."""
    mine = torch.tensor([int(saved is not None and torch.equal(saved, current))], dtype=torch.int64)
    differ = [rank for rank, ok in enumerate(crypten.communicator.get().all_gather(mine)) if not int(ok[0])]
    if differ:
        raise CheckpointError(f"{where}: the MAC key share saved by rank(s) {differ} is not the one the dealer holds "
                              "for that run: the dealer's file and the parties' come from different runs, or one was "
                              "altered; use one run folder, as it was written")
