"""Agreeing on a schema through metadata only: column names, dtypes and row counts."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import pandas as pd

from mpc.data.tables import DataError


@dataclass(frozen=True)
class TableMeta:
    """What a party tells the others about its table; never any values."""

    party: str
    columns: tuple[str, ...]
    dtypes: tuple[str, ...]
    rows: int

    @classmethod
    def of(cls, party: str, frame: pd.DataFrame) -> "TableMeta":
        kinds = tuple("int" if pd.api.types.is_integer_dtype(frame[c]) else "float" for c in frame.columns)
        return cls(party=party, columns=tuple(frame.columns), dtypes=kinds, rows=len(frame))

    def to_wire(self) -> dict:
        return asdict(self)

    @classmethod
    def from_wire(cls, message: dict) -> "TableMeta":
        return cls(
            party=str(message["party"]),
            columns=tuple(str(c) for c in message["columns"]),
            dtypes=tuple(str(d) for d in message["dtypes"]),
            rows=int(message["rows"]),
        )


def check_horizontal(metas: Sequence[TableMeta], label: str, id_column: str) -> tuple[str, ...]:
    """Every party must hold the same columns; returns the feature columns (label and id excluded)."""
    reference = metas[0]
    if label not in reference.columns:
        raise DataError(f"{reference.party}: label column {label!r} (data.label) is missing from its table")
    for meta in metas[1:]:
        missing = [c for c in reference.columns if c not in meta.columns]
        extra = [c for c in meta.columns if c not in reference.columns]
        if missing or extra:
            detail = f"lacks column {missing[0]!r}" if missing else f"has unexpected column {extra[0]!r}"
            raise DataError(
                f"schema mismatch: {meta.party} {detail} (compared with {reference.party}'s "
                f"columns {list(reference.columns)})"
            )
        for column in reference.columns:
            mine = meta.dtypes[meta.columns.index(column)]
            theirs = reference.dtypes[reference.columns.index(column)]
            if mine != theirs and "float" not in (mine, theirs):
                raise DataError(
                    f"schema mismatch: {meta.party} column {column!r} is {mine}, "
                    f"{reference.party} has {theirs}"
                )
    return tuple(c for c in reference.columns if c not in (label, id_column))


def check_vertical(metas: Sequence[TableMeta], label: str, label_party: int, id_column: str) -> list[tuple[str, ...]]:
    """Same rows everywhere, disjoint columns, one label holder; returns each party's features."""
    features: list[tuple[str, ...]] = []
    owner: dict[str, str] = {}
    for index, meta in enumerate(metas):
        if id_column not in meta.columns:
            raise DataError(f"{meta.party}: id column {id_column!r} (data.id_column) is missing "
                            f"(vertical partition aligns rows by it)")
        if meta.rows != metas[0].rows:
            raise DataError(
                f"schema mismatch: {meta.party} has {meta.rows} rows, {metas[0].party} has "
                f"{metas[0].rows}; vertical partition needs the same customers at every party"
            )
        has_label = label in meta.columns
        if index == label_party and not has_label:
            raise DataError(f"{meta.party}: holds the label (data.label_party={label_party}) but has no "
                            f"label column {label!r} (data.label)")
        if index != label_party and has_label:
            raise DataError(f"{meta.party}: has a {label!r} column, but data.label_party={label_party} names another party")
        own = tuple(c for c in meta.columns if c not in (id_column, label))
        for column in own:
            if column in owner:
                raise DataError(f"schema mismatch: column {column!r} is held by both {owner[column]} and {meta.party}")
            owner[column] = meta.party
        features.append(own)
    return features
