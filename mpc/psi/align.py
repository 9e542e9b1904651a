"""Aligning a vertical split's tables by private set intersection of their id columns."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import numpy as np
import pandas as pd

from mpc.data.config import DataConfig
from mpc.data.schema import TableMeta
from mpc.data.tables import DataError
from mpc.psi.config import PsiConfig
from mpc.psi.protocol import intersect

log = logging.getLogger("cotrain.psi")


def integer_ids(frame: pd.DataFrame, id_column: str, party: str, what: str) -> np.ndarray:
    """The id column as int64; a DataError naming the party if it is missing or not integral."""
    if id_column not in frame.columns:
        raise DataError(f"{party}: id column {id_column!r} is missing from its {what} table "
                        "(private set intersection matches rows by it)")
    values = frame[id_column].to_numpy()
    if not pd.api.types.is_integer_dtype(values):
        whole = np.isfinite(values) & (values == np.round(values)) & (np.abs(values) < 2.0**63)
        if not whole.all():
            row = int(np.flatnonzero(~whole)[0])
            raise DataError(f"{party}: id column {id_column!r} of its {what} table holds a non-integer "
                            f"id at data row {row + 1}")
    return values.astype(np.int64)


def align_by_psi(comm: Any, frame: pd.DataFrame, metas: Sequence[TableMeta], data: DataConfig,
                 psi: PsiConfig, party: str, what: str) -> tuple[pd.DataFrame, list[TableMeta]]:
    """This party's rows of the ids every party holds, and the metas with that count. The
    order is one for every party without a further message: with ``psi.reveal=ids``
    ascending id, with ``psi.reveal=size`` the order of the fully blinded values the
    comparer sent the positions in, which no id decides (and without the id column)."""
    ids, problem = np.empty(0, dtype=np.int64), ""
    try:
        ids = integer_ids(frame, data.id_column, party, what)
    except DataError as error:
        problem = str(error)
    found = intersect(comm, ids, party, what, psi.min_intersection, problem)
    log.info("private set intersection of the %s tables: %d of this party's %d rows are held by all %d parties",
             what, found.size, len(ids), len(found.set_sizes))
    if psi.reveal == "size":  # the aligned table keeps no id column: nothing after this lists the common ids
        aligned = frame.iloc[found.rows].drop(columns=[data.id_column])
    else:
        aligned = frame.iloc[found.rows[np.argsort(ids[found.rows], kind="stable")]]
    return aligned.reset_index(drop=True), [dataclasses.replace(meta, rows=found.size) for meta in metas]
