"""What a party leaves behind: its model (shares or revealed), its log, the run summary."""

from __future__ import annotations

import json
import logging
import os
import resource
from pathlib import Path
from typing import Any

import torch

from mpc import release
from mpc.audit import AUDIT_FILE, AuditLog
from mpc.release import ReleaseGate, ReleasePolicy
from mpc.models import secure_state
from mpc.checkpoint import save_private
from mpc.scoring import MAC_KEY_FILE, SHARES_FILE, ModelRecord, predictions_frame, save_model_file
from mpc.shares import mac_key_share, saved_share, verify
from parties.config import RunConfig

log = logging.getLogger(__name__)


def party_dir(output_dir: str, run_id: str, party: str) -> Path:
    path = Path(output_dir) / run_id / party
    path.mkdir(parents=True, exist_ok=True)
    return path


def release_gate(config: RunConfig, rank: int, directory: Path) -> ReleaseGate:
    """This party's release gate for the run's ``release:`` policy, logging every opening to
    its ``audit.jsonl`` (a scoring run continues the training run's chain)."""
    policy = ReleasePolicy(config.release, config.names(), config.train.evaluator, config.train.reveal_to,
                           score_owner=config.score.owner or None)
    return ReleaseGate(policy, rank, AuditLog(directory / AUDIT_FILE))


def atomic_save(write: Any, path: Path) -> None:
    """Write to a temporary name, then rename: a crash never leaves half a file behind."""
    temporary = path.with_name(path.name + ".partial")
    write(temporary)
    os.replace(temporary, path)


def write_json(path: Path, payload: dict) -> None:
    atomic_save(lambda p: p.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n"), path)


def save_model(crypten: Any, secure_model: Any, torch_model: torch.nn.Module, record: ModelRecord,
               reveal_to: list[str], names: tuple[str, ...], rank: int, directory: Path) -> dict:
    """Keep this party's shares (and the record that scoring them needs, as JSON); reveal the
    weights, with the record, only to the parties named in reveal_to.

    Returns what this party saved, for the summary.
    """
    unknown = [name for name in reveal_to if name not in names]
    if unknown:
        raise ValueError(f"train.reveal_to names {unknown[0]!r}, which is not a party ({', '.join(names)})")
    secure_params = secure_state(secure_model)
    verify(list(secure_params.values()))  # a share kept on disk is checked like a revealed value
    shares = {name: saved_share(param) for name, param in secure_params.items()}
    atomic_save(lambda p: torch.save(shares, p), directory / SHARES_FILE)
    key = mac_key_share(next(iter(secure_params.values())))
    if key is not None:  # their MACs hold under the run's key only: scoring them checks it is the same
        save_private(directory / MAC_KEY_FILE, key)
    write_json(directory / "model.json", record.as_dict())
    saved = {"shares": str(directory / SHARES_FILE)}
    recipients = [names.index(name) for name in reveal_to]
    revealed = {name: {dst: release.open(param, "model", to=dst) for dst in recipients}
                for name, param in secure_params.items()}
    if rank in recipients:
        plain = {name: values[rank] for name, values in revealed.items()}
        state = _match_torch_state(torch_model, plain)
        atomic_save(lambda p: save_model_file(p, record, state), directory / "model.pt")
        saved["revealed"] = str(directory / "model.pt")
    return saved


def write_predictions(path: Path, outputs: torch.Tensor, task: str, ids: Any = None) -> None:
    """Scores as CSV (``mpc.scoring.predictions_frame``), written atomically."""
    frame = predictions_frame(outputs, ids, task)
    atomic_save(lambda p: frame.to_csv(p, index=False, float_format="%.9g"), path)


def _match_torch_state(torch_model: torch.nn.Module, plain: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The torch model's state with the revealed tensors put in by name (CrypTen's converted
    model names them as torch does, plus ``.data``); buffers CrypTen does not keep (BatchNorm's
    batch count) stay as the torch model has them."""
    state = {name: tensor.clone() for name, tensor in torch_model.state_dict().items()}
    for name, value in plain.items():
        key = name.removesuffix(".data")
        if key not in state or state[key].shape != value.shape:
            raise RuntimeError(f"the revealed parameter {key!r} does not match the torch model's layout")
        state[key] = value.clone()
    return state


def process_usage() -> dict[str, float]:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB), the CPU
    seconds it has used (user and system) and its torch threads: on a shared machine, what a
    run costs apart from how long it waited for a core."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"peak_rss_bytes": usage.ru_maxrss * 1024, "cpu_s": usage.ru_utime + usage.ru_stime,
            "threads": torch.get_num_threads()}
