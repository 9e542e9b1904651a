"""Token sequences as model input: each party one-hot encodes its own token ids.

A sequence table holds, per row, ``length`` positions of token ids, one column per field and
position (``merchant_00, amount_00, ..., merchant_15, ...``, ids 0..size-1 of the field's
vocabulary in ``data.vocabulary``), plus the label and the id. The holder turns each
position's ids into the concatenation of its fields' one-hot codes, so that the model's first
linear layer is the sum of one embedding per field, and secret-shares those rows (or, in a
vertical split, where each party holds some fields of the same customers, those columns): an
embedding lookup becomes a product with shared one-hot rows. No statistics are revealed and
nothing is scaled (a one-hot code is already in range).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from mpc import release
from mpc.data.config import DataConfig
from mpc.data.exchange import checked_by_all
from mpc.data.preprocessing import Preprocessing
from mpc.data.schema import check_horizontal
from mpc.data.sharing import SharedDataset, read_and_announce, share_from_each, share_vertical
from mpc.data.statistics import secure_sum
from mpc.data.tables import DataError, read_table, table_error
from mpc.psi import PsiConfig


def token_columns(length: int, vocabulary: Mapping[str, int]) -> list[str]:
    """The table's token columns in model order: position by position, field by field."""
    return [f"{name}_{position:02d}" for position in range(length) for name in vocabulary]


def feature_names(length: int, vocabulary: Mapping[str, int]) -> list[str]:
    """One name per one-hot feature: ``merchant_00=3``."""
    return [f"{name}_{position:02d}={token}" for position in range(length)
            for name, size in vocabulary.items() for token in range(size)]


def one_hot_rows(frame: pd.DataFrame, length: int, vocabulary: Mapping[str, int], party: str,
                 path: str | Path | None) -> torch.Tensor:
    """The rows of ``frame`` as one-hot codes (float64, rows x length * sum(sizes)); a missing
    column or an id outside its field's vocabulary names the party, file, column and row."""
    columns = token_columns(length, vocabulary)
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise table_error(party, path, f"has no token column {missing[0]!r} (a sequence table needs columns "
                          f"<field>_00..<field>_{length - 1:02d} for each field of data.vocabulary: "
                          f"{', '.join(vocabulary)})")
    codes = []
    for column in columns:
        size = vocabulary[column.rsplit("_", 1)[0]]
        ids = frame[column].to_numpy()
        bad = np.flatnonzero((ids != np.rint(ids)) | (ids < 0) | (ids >= size))
        if len(bad):
            raise table_error(party, path, f"column {column!r} holds token ids 0..{size - 1} "
                              f"(data.vocabulary), data row {bad[0] + 1} does not")
        codes.append(np.eye(size)[ids.astype(np.int64)])
    if not codes:
        raise DataError(f"{party}: data.vocabulary is empty; a sequence table needs at least one token field")
    return torch.from_numpy(np.concatenate(codes, axis=1))


def labels_column(frame: pd.DataFrame, label: str) -> torch.Tensor:
    return torch.tensor(frame[label].to_numpy(np.float64)).reshape(-1, 1)



def encoded_table(path: str | Path, party: str, config: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """A sequence file's rows as one-hot codes and its labels (float64)."""
    frame = read_table(path, party)
    return one_hot_rows(frame, config.length, config.vocabulary, party, path), labels_column(frame, config.label)


def sequence_preprocessing(config: DataConfig) -> Preprocessing:
    """The record of a sequence run: the one-hot features, entering the ring unscaled."""
    names = feature_names(config.length, config.vocabulary)
    return Preprocessing(features=names, mean=[0.0] * len(names), std=[1.0] * len(names), label=config.label,
                         id_column=config.id_column)


def one_hot_features(config: DataConfig, columns: list[list[str]]) -> tuple[Preprocessing, list[list[str]]]:
    """A vertical split's record (``sequence_preprocessing``) and each party's one-hot
    features in it, from the token columns each party holds (other columns are not used);
    every token column of the model must be held by some party."""
    holder = {column: rank for rank, group in enumerate(columns) for column in group}
    missing = [column for column in token_columns(config.length, config.vocabulary) if column not in holder]
    if missing:
        raise DataError(f"no party holds token column {missing[0]!r}: a vertical split of sequences needs every "
                        f"column <field>_00..<field>_{config.length - 1:02d} of data.vocabulary at some party")
    preprocessing = sequence_preprocessing(config)
    owners = [holder[name.rpartition("=")[0]] for name in preprocessing.features]
    return preprocessing, [[name for name, owner in zip(preprocessing.features, owners) if owner == rank]
                           for rank in range(len(columns))]


def share_sequences(crypten: Any, config: DataConfig, train_path: str | None, test_path: str | None, party: str,
                    device: Any = "cpu", withheld: int | None = None, psi: PsiConfig | None = None,
                    ) -> tuple[SharedDataset, SharedDataset | None, Preprocessing]:
    """Horizontal split: every party one-hot encodes its own sequences and shares the rows;
    party ``withheld`` (the model owner, who pre-trained on its table) shares no training rows.
    Revealed: the row counts and the pooled count of positive training labels.
    Vertical split: every party holds some token columns of the same customers, one-hot
    encodes them and shares those features (``share_vertical``; ``psi`` as there), which
    take their places in the model's order."""
    if config.partition == "vertical":
        return share_vertical(crypten, config, train_path, test_path, party, device, psi,
                              features=partial(one_hot_features, config))
    comm = crypten.communicator.get()
    rank = comm.get_rank()
    frame, metas = read_and_announce(comm, train_path, party, True, config)
    check_horizontal(metas, config.label, config.id_column)
    preprocessing = sequence_preprocessing(config)
    counts = [0 if owner == withheld else meta.rows for owner, meta in enumerate(metas)]
    if not sum(counts):
        raise DataError("no party shares sequences to train on: the model owner's own rows are withheld "
                        "(pretrain.owner) and the other parties have none")
    own_rows = frame if rank != withheld else frame.iloc[:0]
    positives = release.open_with(lambda: secure_sum(comm, [float(own_rows[config.label].sum())]), "positive_count")
    train = _share_rows(crypten, config, own_rows, counts, train_path, party, round(positives[0]), device)
    test_frame, test_metas = read_and_announce(comm, test_path, party, False, config)
    test = None
    present = [meta for meta in test_metas if meta is not None]
    if present:
        check_horizontal([metas[0], *present], config.label, config.id_column)
        test_counts = [meta.rows if meta is not None else 0 for meta in test_metas]
        test = _share_rows(crypten, config, test_frame, test_counts, test_path, party, -1, device)
    return train, test, preprocessing


def _share_rows(crypten: Any, config: DataConfig, frame: pd.DataFrame | None, counts: list[int], path: Any,
                party: str, positives: int, device: Any) -> SharedDataset:
    rank = crypten.communicator.get().get_rank()
    names = feature_names(config.length, config.vocabulary)
    codes = checked_by_all(crypten.communicator.get(), lambda: None if frame is None or frame.empty else
                           one_hot_rows(frame, config.length, config.vocabulary, party, path))
    labels = None if frame is None or frame.empty else labels_column(frame, config.label)
    x = share_from_each(crypten, [codes if owner == rank else None for owner in range(len(counts))],
                        [(n, len(names)) for n in counts], 0, device)
    y = share_from_each(crypten, [labels if owner == rank else None for owner in range(len(counts))],
                        [(n, 1) for n in counts], 0, device)
    contributed = [{"rows": n, "columns": len(names)} for n in counts]
    return SharedDataset(x, y, names, sum(counts), contributed, positives)
