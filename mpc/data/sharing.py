"""Turning each party's own table into one secret-shared dataset.

Parties first exchange metadata only and agree on a schema; then each secret-shares its
rows (horizontal) or its columns (vertical). Scaling statistics of a horizontal split are
computed under MPC from every party's contribution; only the pooled mean and standard
deviation (and the pooled count of positives, for the class weight) are revealed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mpc.data.config import DataConfig
from mpc.data.labels import check_labels
from mpc.data.schema import TableMeta, check_horizontal, check_vertical
from mpc.data.tables import DataError, read_table


@dataclass
class SharedDataset:
    """Secret-shared features and labels plus the public facts every party agreed on."""

    features: Any  # MPCTensor, rows x columns, standardised
    labels: Any  # MPCTensor, rows x 1
    feature_names: list[str]
    rows: int
    contributed: list[dict]  # per party: the rows or the columns it shared
    positive_count: int  # pooled count of label 1 (the class weight needs it); -1 if not agreed


@dataclass
class Scaling:
    mean: torch.Tensor
    std: torch.Tensor

    def apply(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.mean) / self.std


def _exchange(comm: Any, payload: dict) -> list[dict]:
    """Every party's payload, in rank order. A payload with ``error`` stops all parties."""
    gathered = [comm.broadcast_obj(payload if rank == comm.get_rank() else None, rank)
                for rank in range(comm.get_world_size())]
    for message in gathered:
        if message.get("error"):
            raise DataError(message["error"])
    return gathered


def _read_and_announce(comm: Any, path: str | Path | None, party: str, required: bool,
                       label: str, task: str = "binary", classes: int = 2) -> tuple[pd.DataFrame | None, list[TableMeta | None]]:
    """Read and check this party's table; every party learns whether all of them succeeded
    before anything is shared, so one bad table stops everyone at once."""
    try:
        frame = read_table(path, party) if path else None
        if required and frame is None:
            raise DataError(f"{party}: no data file configured (party data path is empty)")
        if frame is not None and label in frame.columns:
            check_labels(frame[label], party, path, label, task, classes)
        message = {"meta": TableMeta.of(party, frame).to_wire() if frame is not None else None}
    except DataError as error:
        frame, message = None, {"error": str(error)}
    messages = _exchange(comm, message)
    return frame, [TableMeta.from_wire(m["meta"]) if m["meta"] else None for m in messages]


def _share_from_each(crypten: Any, pieces: list[torch.Tensor | None], shapes: list[tuple[int, int]], dim: int,
                     device: Any) -> Any:
    """Party i contributes ``pieces[i]`` (only i has the values); concatenated along ``dim``."""
    rank = crypten.communicator.get().get_rank()
    shared = []
    for owner, shape in enumerate(shapes):
        if 0 in shape:
            continue
        values = pieces[owner] if owner == rank else torch.zeros(shape)
        shared.append(crypten.cryptensor(values.to(device), src=owner, device=device))
    return shared[0] if len(shared) == 1 else crypten.cat(shared, dim=dim)


def _joint_scaling(crypten: Any, local: torch.Tensor | None, width: int, total_rows: int,
                   labels: torch.Tensor | None, device: Any) -> tuple[Scaling, int]:
    """Pooled mean and std per feature and the pooled positive count, computed under MPC.

    Each party shares its column sums and sums of squares already divided by the public
    total row count, so the shared magnitudes stay within fixed-point range.
    """
    world = crypten.communicator.get().get_world_size()
    rank = crypten.communicator.get().get_rank()
    stats = torch.zeros(2 * width + 1)
    if local is not None:
        values = local.double()
        stats = torch.cat([values.sum(0) / total_rows, (values**2).sum(0) / total_rows,
                           labels.double().sum().reshape(1) / total_rows]).float()
    pooled = sum(crypten.cryptensor((stats if owner == rank else torch.zeros_like(stats)).to(device), src=owner, device=device)
                 for owner in range(world))
    mean, mean_square = pooled[:width], pooled[width:2 * width]
    variance = mean_square - mean * mean
    revealed = crypten.cat([mean, variance, pooled[2 * width:]]).get_plain_text().double()
    mean_plain, var_plain = revealed[:width], revealed[width:2 * width].clamp(min=0)
    std = var_plain.sqrt()
    std[std < 1e-6] = 1.0  # a constant column stays as it is
    positives = int(round(revealed[-1].item() * total_rows))
    return Scaling(mean_plain.float(), std.float()), positives


def share_horizontal(crypten: Any, config: DataConfig, train_path: str | None, test_path: str | None,
                     party: str, device: Any = "cpu") -> tuple[SharedDataset, SharedDataset | None, Scaling]:
    comm = crypten.communicator.get()
    frame, metas = _read_and_announce(comm, train_path, party, True, config.label, config.task, config.classes)
    features = list(check_horizontal(metas, config.label))
    total = sum(meta.rows for meta in metas)
    local_x = torch.tensor(frame[features].to_numpy(np.float64)) if frame is not None else None
    local_y = torch.tensor(frame[config.label].to_numpy(np.float64)) if frame is not None else None
    scaling, positives = _joint_scaling(crypten, local_x, len(features), total, local_y, device)
    train = _share_rows(crypten, metas, features, scaling, local_x, local_y, positives, device)

    test_frame, test_metas = _read_and_announce(comm, test_path, party, False, config.label, config.task, config.classes)
    present = [meta for meta in test_metas if meta is not None]
    test = None
    if present:
        check_horizontal([metas[0], *present], config.label)
        tx = torch.tensor(test_frame[features].to_numpy(np.float64)) if test_frame is not None else None
        ty = torch.tensor(test_frame[config.label].to_numpy(np.float64)) if test_frame is not None else None
        test = _share_rows(crypten, test_metas, features, scaling, tx, ty, -1, device)
    return train, test, scaling


def _share_rows(crypten: Any, metas: list[TableMeta | None], features: list[str], scaling: Scaling,
                local_x: torch.Tensor | None, local_y: torch.Tensor | None, positives: int,
                device: Any) -> SharedDataset:
    rank = crypten.communicator.get().get_rank()
    rows = [meta.rows if meta is not None else 0 for meta in metas]
    width = len(features)
    x_pieces = [scaling.apply(local_x.float()) if owner == rank and local_x is not None else None for owner in range(len(rows))]
    y_pieces = [local_y.float().reshape(-1, 1) if owner == rank and local_y is not None else None for owner in range(len(rows))]
    x = _share_from_each(crypten, x_pieces, [(n, width) for n in rows], 0, device)
    y = _share_from_each(crypten, y_pieces, [(n, 1) for n in rows], 0, device)
    contributed = [{"rows": n, "columns": len(features)} for n in rows]
    return SharedDataset(x, y, features, sum(rows), contributed, positives)


def ids_digest(ids: np.ndarray, key: bytes) -> bytes:
    """A keyed digest of the whole id column: equal digests mean equal ids in equal order."""
    return hmac.new(key, np.ascontiguousarray(ids, dtype=np.int64).tobytes(), hashlib.sha256).digest()


def _agree_digest_key(comm: Any) -> bytes:
    """A fresh key that every party helped choose, so none can fix it in advance."""
    contributions = _exchange(comm, {"nonce": secrets.token_bytes(32)})
    return hashlib.sha256(b"".join(m["nonce"] for m in contributions)).digest()


def _check_alignment(comm: Any, frame: pd.DataFrame, config: DataConfig, party: str, what: str) -> None:
    key = _agree_digest_key(comm)
    digests = _exchange(comm, {"digest": ids_digest(frame[config.id_column].to_numpy(), key)})
    reference = digests[config.label_party]["digest"]
    for rank, message in enumerate(digests):
        if not hmac.compare_digest(message["digest"], reference):
            raise DataError(
                f"party {rank}: the {config.id_column!r} column of its {what} table does not match "
                f"party {config.label_party}'s (different ids or a different order); align the rows first"
            )


def share_vertical(crypten: Any, config: DataConfig, train_path: str | None, test_path: str | None,
                   party: str, device: Any = "cpu") -> tuple[SharedDataset, SharedDataset | None, list[Scaling]]:
    comm = crypten.communicator.get()
    rank = comm.get_rank()
    if not 0 <= config.label_party < comm.get_world_size():
        raise DataError(f"data.label_party={config.label_party} is not a party rank (0..{comm.get_world_size() - 1})")
    frame, metas = _read_and_announce(comm, train_path, party, True, config.label, config.task, config.classes)
    columns = [list(c) for c in check_vertical(metas, config.label, config.label_party, config.id_column)]
    _check_alignment(comm, frame, config, party, "training")
    own = torch.tensor(frame[columns[rank]].to_numpy(np.float64))
    scaling = Scaling(own.mean(0).float(), own.std(0, unbiased=False).float())
    scaling.std[scaling.std < 1e-6] = 1.0
    train = _share_columns(crypten, frame, columns, scaling, config, True, device)

    test_frame, test_metas = _read_and_announce(comm, test_path, party, False, config.label, config.task, config.classes)
    test = None
    if any(meta is not None for meta in test_metas):
        if any(meta is None for meta in test_metas):
            missing = next(i for i, meta in enumerate(test_metas) if meta is None)
            raise DataError(f"party {missing}: has no held-out table, but a vertical split needs every party's columns")
        check_vertical(test_metas, config.label, config.label_party, config.id_column)
        _check_alignment(comm, test_frame, config, party, "held-out")
        test = _share_columns(crypten, test_frame, columns, scaling, config, False, device)
    return train, test, [scaling]


def _share_columns(crypten: Any, frame: pd.DataFrame, columns: list[list[str]], scaling: Scaling,
                   config: DataConfig, positives_from_label_holder: bool, device: Any) -> SharedDataset:
    comm = crypten.communicator.get()
    rank = comm.get_rank()
    rows = len(frame)
    own = scaling.apply(torch.tensor(frame[columns[rank]].to_numpy(np.float64)).float())
    pieces = [own if owner == rank else None for owner in range(len(columns))]
    x = _share_from_each(crypten, pieces, [(rows, len(c)) for c in columns], 1, device)
    label_holder = config.label_party
    labels = None
    if rank == label_holder:
        labels = torch.tensor(frame[config.label].to_numpy(np.float64))
    y = crypten.cryptensor((labels.float().reshape(-1, 1) if labels is not None else torch.zeros(rows, 1)).to(device),
                           src=label_holder, device=device)
    positives = -1
    if positives_from_label_holder:
        positives = int(comm.broadcast_obj(int(labels.sum().item()) if labels is not None else None, label_holder))
    names = [name for group in columns for name in group]
    contributed = [{"rows": rows, "columns": len(group)} for group in columns]
    return SharedDataset(x, y, names, rows, contributed, positives)
