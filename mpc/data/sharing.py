"""Turning each party's own table into one secret-shared dataset.

Parties first exchange metadata only and agree on a schema; each checks that its own values
fit the ring (``mpc.data.guards``) before anything is shared. The scaling statistics come
next: in a horizontal split the pooled mean and standard deviation are computed exactly
under MPC (``mpc.data.statistics``), and only they (and the pooled count of positives, for
the class weight) are revealed; in a vertical split each party computes its own columns'
statistics and announces them (aggregates only) to the others. Either way every party ends
with the same ``Preprocessing`` record, constant columns dropped by name, and secret-shares
its rows (horizontal) or columns (vertical) scaled by exactly that record.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from mpc import release
from mpc.data.config import DataConfig
from mpc.data.exchange import checked_by_all, exchange
from mpc.data.guards import check_raw_range, check_scaled_range
from mpc.data.labels import check_labels
from mpc.data.preprocessing import Preprocessing
from mpc.data.schema import TableMeta, check_horizontal, check_vertical
from mpc.data.statistics import CONSTANT_RELATIVE_STD, constant_columns, local_statistics, pooled_statistics
from mpc.data.tables import DataError, read_table, table_error
from mpc.psi import PsiConfig, align_by_psi
from protocols.coin import joint_random

log = logging.getLogger("cotrain.data")


@dataclass
class SharedDataset:
    """Secret-shared features and labels plus the public facts every party agreed on."""

    features: Any  # MPCTensor, rows x columns, standardised
    labels: Any  # MPCTensor, rows x 1
    feature_names: list[str]
    rows: int
    contributed: list[dict]  # per party: the rows or the columns it shared
    positive_count: int  # pooled count of label 1 (the class weight needs it); -1 if not agreed


def read_and_announce(comm: Any, path: str | Path | None, party: str, required: bool,
                       config: DataConfig) -> tuple[pd.DataFrame | None, list[TableMeta | None]]:
    """Read and check this party's table; every party learns whether all of them succeeded
    before anything is shared, so one bad table stops everyone at once."""
    try:
        frame = read_table(path, party) if path else None
        if required and frame is None:
            raise DataError(f"{party}: no data file configured (party data path is empty)")
        if frame is not None:
            if config.label in frame.columns:
                check_labels(frame[config.label], party, path, config.label, config.task, config.classes)
            own = [c for c in frame.columns if c not in (config.label, config.id_column)]
            check_raw_range(frame[own].to_numpy(np.float64), own, party, path)
        failure = None
    except DataError as error:
        frame, failure = None, error
    message = {"meta": TableMeta.of(party, frame).to_wire() if frame is not None else None}
    messages = exchange(comm, message, failure)
    return frame, [TableMeta.from_wire(m["meta"]) if m["meta"] else None for m in messages]


def _record(columns: Sequence[str], mean: np.ndarray, std: np.ndarray, config: DataConfig) -> Preprocessing:
    """The agreed preprocessing: constant columns are dropped by name, with a warning."""
    dropped = constant_columns(columns, mean, std)
    if dropped:
        log.warning("dropping constant column(s) %s: their standard deviation is at most %g x |mean|, "
                    "so they carry nothing to learn from", ", ".join(repr(c) for c in dropped), CONSTANT_RELATIVE_STD)
    kept = [i for i, name in enumerate(columns) if name not in dropped]
    if not kept:
        raise DataError(f"every feature column is constant ({', '.join(columns)}): nothing to train on")
    return Preprocessing(features=[columns[i] for i in kept], mean=[float(mean[i]) for i in kept],
                         std=[float(std[i]) for i in kept], label=config.label, id_column=config.id_column,
                         dropped=list(dropped))


def _scaled(preprocessing: Preprocessing, frame: pd.DataFrame | None, party: str, path: Any) -> torch.Tensor | None:
    """This party's rows scaled by the record, range-checked (float64)."""
    if frame is None:
        return None
    try:
        values = preprocessing.transform(frame)
    except ValueError as error:  # a token outside its vocabulary (a sequence run's one-hot features)
        raise table_error(party, path, str(error)) from None
    check_scaled_range(values.numpy(), preprocessing.features, party, path)
    return values


def share_from_each(crypten: Any, pieces: list[torch.Tensor | None], shapes: list[tuple[int, int]], dim: int,
                     device: Any) -> Any:
    """Party i contributes ``pieces[i]`` (only i has the values); concatenated along ``dim``."""
    rank = crypten.communicator.get().get_rank()
    shared = []
    for owner, shape in enumerate(shapes):
        if 0 in shape:
            continue
        values = pieces[owner] if owner == rank else torch.zeros(shape, dtype=torch.float64)
        shared.append(crypten.cryptensor(values.to(device), src=owner, device=device))
    return shared[0] if len(shared) == 1 else crypten.cat(shared, dim=dim)


def share_horizontal(crypten: Any, config: DataConfig, train_path: str | None, test_path: str | None,
                     party: str, device: Any = "cpu") -> tuple[SharedDataset, SharedDataset | None, Preprocessing]:
    comm = crypten.communicator.get()
    frame, metas = read_and_announce(comm, train_path, party, True, config)
    columns = list(check_horizontal(metas, config.label, config.id_column))
    total = sum(meta.rows for meta in metas)
    stats = pooled_statistics(comm, frame[columns].to_numpy(np.float64), frame[config.label].to_numpy(np.float64),
                              total)
    preprocessing = _record(columns, stats.mean, stats.std, config)
    train = _share_rows(crypten, metas, preprocessing, frame, train_path, party, stats.positives, device)

    test_frame, test_metas = read_and_announce(comm, test_path, party, False, config)
    present = [meta for meta in test_metas if meta is not None]
    test = None
    if present:
        check_horizontal([metas[0], *present], config.label, config.id_column)
        test = _share_rows(crypten, test_metas, preprocessing, test_frame, test_path, party, -1, device)
    return train, test, preprocessing


def _share_rows(crypten: Any, metas: list[TableMeta | None], preprocessing: Preprocessing,
                frame: pd.DataFrame | None, path: Any, party: str, positives: int, device: Any) -> SharedDataset:
    comm = crypten.communicator.get()
    rank = comm.get_rank()
    rows = [meta.rows if meta is not None else 0 for meta in metas]
    width = len(preprocessing.features)
    scaled = checked_by_all(comm, lambda: _scaled(preprocessing, frame, party, path))
    labels = None if frame is None else torch.tensor(frame[preprocessing.label].to_numpy(np.float64)).reshape(-1, 1)
    x_pieces = [scaled if owner == rank else None for owner in range(len(rows))]
    y_pieces = [labels if owner == rank else None for owner in range(len(rows))]
    x = share_from_each(crypten, x_pieces, [(n, width) for n in rows], 0, device)
    y = share_from_each(crypten, y_pieces, [(n, 1) for n in rows], 0, device)
    contributed = [{"rows": n, "columns": width} for n in rows]
    return SharedDataset(x, y, list(preprocessing.features), sum(rows), contributed, positives)


def ids_digest(ids: np.ndarray, key: bytes) -> bytes:
    """A keyed digest of the whole id column: equal digests mean equal ids in equal order."""
    return hmac.new(key, np.ascontiguousarray(ids, dtype=np.int64).tobytes(), hashlib.sha256).digest()


def _agree_digest_key(comm: Any) -> bytes:
    """A fresh key that every party helped choose (commit, then reveal), so none can fix it."""
    return joint_random(comm, b"id digest key")


def _check_alignment(comm: Any, frame: pd.DataFrame, config: DataConfig, names: Sequence[str], path: Any,
                     what: str) -> None:
    key = _agree_digest_key(comm)
    digests = exchange(comm, {"digest": ids_digest(frame[config.id_column].to_numpy(), key)})
    reference = digests[config.label_party]["digest"]
    for rank, message in enumerate(digests):
        if not isinstance(message.get("digest"), bytes) or not hmac.compare_digest(message["digest"], reference):
            problem = (f"the {config.id_column!r} column (data.id_column) of its {what} table does not match "
                       f"{names[config.label_party]}'s (different ids or a different order); align the rows first, "
                       "or set psi.enabled=true to train on the ids every party holds")
            if rank == comm.get_rank():  # its own file is named in its own message only
                raise table_error(names[rank], path, problem)
            raise DataError(f"{names[rank]}: {problem}")


def announced_statistics(comm: Any, mean: np.ndarray, std: np.ndarray,
                          columns: list[list[str]], names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Every party's column means and stds (aggregates), in feature order."""
    messages = exchange(comm, {"mean": [float(v) for v in mean], "std": [float(v) for v in std]})
    means, stds = [], []
    for rank, message in enumerate(messages):
        for key, into in (("mean", means), ("std", stds)):
            values = message.get(key)
            if (not isinstance(values, list) or len(values) != len(columns[rank])
                    or not all(isinstance(v, float) and np.isfinite(v) for v in values)):
                raise DataError(f"{names[rank]} announced malformed column statistics ({key!r})")
            into.extend(values)
    return np.asarray(means), np.asarray(stds)


FeatureAgreement = Callable[[list[list[str]]], tuple[Preprocessing, list[list[str]]]]


def share_vertical(crypten: Any, config: DataConfig, train_path: str | None, test_path: str | None,
                   party: str, device: Any = "cpu", psi: PsiConfig | None = None,
                   features: FeatureAgreement | None = None,
                   ) -> tuple[SharedDataset, SharedDataset | None, Preprocessing]:
    """Each party shares its own columns. With ``psi.enabled`` the rows are first cut down
    to the ids every party holds (private set intersection); without, they must already be
    aligned, which a keyed digest of the id column checks. The columns are scaled by the
    statistics every party announces, unless ``features`` (each party's columns -> the
    record and each party's features in it) settles the record without any: a sequence
    run's one-hot codes (``mpc.data.sequences``)."""
    comm = crypten.communicator.get()
    rank = comm.get_rank()
    psi = psi or PsiConfig()
    if not 0 <= config.label_party < comm.get_world_size():
        raise DataError(f"data.label_party={config.label_party} is not a party rank (0..{comm.get_world_size() - 1})")
    frame, metas = read_and_announce(comm, train_path, party, True, config)
    if psi.enabled:
        frame, metas = align_by_psi(comm, frame, metas, config, psi, party, "training")
    columns = [list(c) for c in check_vertical(metas, config.label, config.label_party, config.id_column)]
    names = [meta.party for meta in metas]
    if not psi.enabled:
        _check_alignment(comm, frame, config, names, train_path, "training")
    if features is not None:
        preprocessing, kept = features(columns)
    else:
        mean, std = local_statistics(frame[columns[rank]].to_numpy(np.float64))
        all_mean, all_std = announced_statistics(comm, mean, std, columns, names)
        preprocessing = _record([name for group in columns for name in group], all_mean, all_std, config)
        kept = [[name for name in group if name in preprocessing.features] for group in columns]
    train = _share_columns(crypten, frame, kept, preprocessing, config, train_path, party, True, device)

    test_frame, test_metas = read_and_announce(comm, test_path, party, False, config)
    test = None
    if any(meta is not None for meta in test_metas):
        if any(meta is None for meta in test_metas):
            missing = next(i for i, meta in enumerate(test_metas) if meta is None)
            raise DataError(f"{names[missing]}: has no held-out table, but a vertical split needs every party's columns")
        if psi.enabled:
            test_frame, test_metas = align_by_psi(comm, test_frame, test_metas, config, psi, party, "held-out")
        check_vertical(test_metas, config.label, config.label_party, config.id_column)
        if not psi.enabled:
            _check_alignment(comm, test_frame, config, names, test_path, "held-out")
        test = _share_columns(crypten, test_frame, kept, preprocessing, config, test_path, party, False, device)
    return train, test, preprocessing


def _share_columns(crypten: Any, frame: pd.DataFrame, columns: list[list[str]], preprocessing: Preprocessing,
                   config: DataConfig, path: Any, party: str, positives_from_label_holder: bool,
                   device: Any) -> SharedDataset:
    comm = crypten.communicator.get()
    rank = comm.get_rank()
    rows = len(frame)
    own = checked_by_all(comm, lambda: _scaled(preprocessing.subset(columns[rank]), frame, party, path))
    pieces = [own if owner == rank else None for owner in range(len(columns))]
    x = share_from_each(crypten, pieces, [(rows, len(c)) for c in columns], 1, device)
    joined = [name for group in columns for name in group]
    if joined != preprocessing.features:  # the parties' columns interleave in the model's order
        position = {name: index for index, name in enumerate(joined)}
        x = x.index_select(1, torch.tensor([position[name] for name in preprocessing.features], device=device))
    label_holder = config.label_party
    labels = None
    if rank == label_holder:
        labels = torch.tensor(frame[config.label].to_numpy(np.float64))
    column = labels.reshape(-1, 1) if labels is not None else torch.zeros(rows, 1, dtype=torch.float64)
    y = crypten.cryptensor(column.to(device), src=label_holder, device=device)
    positives = -1
    if positives_from_label_holder:
        positives = int(release.publish(comm, int(labels.sum().item()) if labels is not None else None,
                                        "positive_count", label_holder))
    contributed = [{"rows": rows, "columns": len(group)} for group in columns]
    return SharedDataset(x, y, list(preprocessing.features), rows, contributed, positives)
