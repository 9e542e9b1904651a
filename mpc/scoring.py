"""Scoring raw rows with a trained model: in plaintext from the revealed model file, or under
MPC from the parties' shares, where neither the model nor the rows are revealed.

Both paths start from the same record, saved by every party next to its shares
(``model.json``) and inside the revealed ``model.pt``: the model definition (its ``_target_``
and arguments, the input width, the task) and the run's :class:`~mpc.data.preprocessing.Preprocessing`. Files hold
plain types and tensors only (``torch.load(weights_only=True)``, JSON); nothing is pickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from mpc import release
from mpc.checkpoint import agree_on_mac_key
from mpc.data.preprocessing import Preprocessing
from mpc.models import build_torch_model, model_kind, secure_state
from mpc.shares import mac_key_share, verify
from protocols.share_tensors import wrapped_like

MODEL_FORMAT = "cotrain-model/2"
SHARES_FILE = "model_shares.pt"  # each party's shares of the trained weights (with their MACs under malicious)
MAC_KEY_FILE = "mac_key_share.pt"  # under protocol=malicious: its share of the MAC key they were saved under


class ModelFileError(ValueError):
    """A model file or record is missing, of another format, or does not fit the data."""


@dataclass
class ModelRecord:
    """What scoring needs besides the weights: the network's definition and the preprocessing."""

    model: dict  # model._target_ and its arguments (mpc.models)
    task: str  # binary, multiclass or regression: what the outputs mean
    input_width: int
    preprocessing: Preprocessing
    protocol: str  # the run's protocol suite: secure scoring uses the same one
    parties: list[str]

    def as_dict(self) -> dict:
        return {"format": MODEL_FORMAT,
                "model": {"definition": dict(self.model), "task": self.task, "input_width": self.input_width},
                "preprocessing": self.preprocessing.as_dict(), "protocol": self.protocol,
                "parties": list(self.parties)}

    @classmethod
    def from_dict(cls, record: dict, source: str) -> "ModelRecord":
        if not isinstance(record, dict) or record.get("format") != MODEL_FORMAT:
            raise ModelFileError(f"{source} is not a cotrain model file (format {MODEL_FORMAT})")
        model = record["model"]
        return cls(model=dict(model["definition"]), task=str(model["task"]), input_width=int(model["input_width"]),
                   preprocessing=Preprocessing.from_dict(record["preprocessing"]),
                   protocol=str(record["protocol"]), parties=[str(p) for p in record["parties"]])

    @property
    def kind(self) -> str:
        return model_kind(self.model)

    def torch_model(self) -> nn.Module:
        """The network with placeholder weights (the caller loads the trained ones)."""
        return build_torch_model(self.model, self.input_width, seed=0)


def save_model_file(path: Path, record: ModelRecord, state: dict[str, torch.Tensor]) -> None:
    torch.save({**record.as_dict(), "state_dict": state}, path)


def load_model_file(path: str | Path) -> tuple[nn.Module, ModelRecord]:
    """The revealed model, ready to score raw rows, and its record."""
    if not Path(path).is_file():
        raise ModelFileError(f"model={path}: no such file")
    try:
        payload = torch.load(path, weights_only=True)
    except Exception as error:  # a pickle with other objects, or not a torch file at all
        raise ModelFileError(f"model={path} cannot be loaded as a cotrain model file: {error}") from None
    record = ModelRecord.from_dict(payload, f"model={path}")
    model = record.torch_model()
    model.load_state_dict(payload["state_dict"])
    return model.train(False), record  # inference mode


def read_record(path: Path) -> ModelRecord:
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file (every party of the run saves one next to its shares)")
    return ModelRecord.from_dict(json.loads(path.read_text()), str(path))


def _per_row(outputs: torch.Tensor) -> torch.Tensor:
    """One value per row for a one-output model (binary, regression), else rows x outputs."""
    return outputs.reshape(-1) if outputs.dim() < 2 or outputs.shape[1] == 1 else outputs


def score_plain(model: nn.Module, preprocessing: Preprocessing, frame: pd.DataFrame) -> torch.Tensor:
    """Outputs for raw rows, scaled exactly as in training (float32, as the model was trained)."""
    with torch.no_grad():
        return _per_row(model(preprocessing.transform(frame).float()))


def load_shares(secure_model: Any, shares: dict[str, torch.Tensor]) -> None:
    """Put this party's saved shares into a freshly converted (same-layout) secure model."""
    parameters = secure_state(secure_model)
    if set(parameters) != set(shares) or any(parameters[k].share.shape != shares[k].shape for k in shares):
        raise ModelFileError("the saved shares do not match the model definition in model.json")
    for name, parameter in parameters.items():
        parameter.share = wrapped_like(shares[name].to(parameter.share.device), parameter.share)


def load_checked_shares(crypten: Any, secure_model: Any, shares: dict[str, torch.Tensor],
                        saved_key: torch.Tensor | None, where: str, suspect: str) -> None:
    """:func:`load_shares`; under a share type with MACs (protocol=malicious) every party first
    checks that this session's MAC key is the one the shares were saved under (``saved_key``,
    this party's share of it; ``where`` names the setting that pointed at them), and the
    shares pass a MAC check before any is used (a share altered on disk stops every party
    with ``CheatDetected``, blaming ``suspect``)."""
    parameters = secure_state(secure_model)
    key = mac_key_share(next(iter(parameters.values())))
    if key is not None:
        agree_on_mac_key(crypten, saved_key, key, where)
    load_shares(secure_model, shares)
    verify(list(parameters.values()), suspect=suspect)


def score_shared(crypten: Any, secure_model: Any, rows: torch.Tensor | None, shape: tuple[int, int],
                 owner: int, device: Any = "cpu") -> torch.Tensor | None:
    """Outputs for ``owner``'s rows (standardised, ``shape``) under MPC, revealed to ``owner``
    only, through the release gate in force (``scores``)."""
    rank = crypten.communicator.get().get_rank()
    values = rows.float() if rank == owner else torch.zeros(shape)
    features = crypten.cryptensor(values.to(device), src=owner, device=device)
    with crypten.no_grad():
        secure_model.train(False)
        logits = secure_model(features)
    revealed = release.open(logits, "scores", to=owner)
    return _per_row(revealed).cpu() if rank == owner else None


def predictions_frame(outputs: torch.Tensor, ids: pd.Series | None, task: str) -> pd.DataFrame:
    """The scores file: the id column where the rows had one, then per task the logit and the
    probability (binary), the predicted class and each class's probability (multiclass), or
    the prediction (regression)."""
    outputs = outputs.double()
    if task == "binary":
        logits = outputs.reshape(-1)
        frame = pd.DataFrame({"logit": logits.numpy(), "score": torch.sigmoid(logits).numpy()})
    elif task == "multiclass":
        probabilities = torch.softmax(outputs, dim=1)
        frame = pd.DataFrame({"class": outputs.argmax(1).numpy(),
                              **{f"score_{k}": probabilities[:, k].numpy() for k in range(outputs.shape[1])}})
    else:
        frame = pd.DataFrame({"prediction": outputs.reshape(-1).numpy()})
    if ids is not None:
        frame.insert(0, ids.name, ids.to_numpy())
    return frame
