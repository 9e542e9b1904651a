"""Reading one party's own table, with errors that name the party, the file and the column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mpc.data.chunked import read_in_chunks


class DataError(ValueError):
    """A party's table cannot be used as it is.

    ``str(error)`` is the owning party's full message: it may name its file and the offending
    value, and stays in that party's own log. ``public`` names only the party, the column, the
    row and the kind of problem: it is what the other parties receive.
    """

    def __init__(self, message: str, public: str | None = None) -> None:
        super().__init__(message)
        self.public = message if public is None else public


def table_error(party: str, path: Any, problem: str, detail: str = "") -> DataError:
    """An error about a party's own file: ``problem`` travels to the peers, while the path and
    ``detail`` (a cell value, a parser's words) stay with the owner."""
    private = f"{party}: {path}: {problem}" + (f" ({detail})" if detail else "")
    return DataError(private, public=f"{party}: {problem}")


def read_table(path: str | Path, party: str) -> pd.DataFrame:
    """Read a CSV or Parquet file; every column must be numeric, finite and present."""
    path = Path(path)
    if not path.is_file():
        raise table_error(party, path, "data file not found")
    try:
        frame = read_in_chunks(path)
    except pd.errors.EmptyDataError:
        raise table_error(party, path, "the file is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as error:
        raise table_error(party, path, "the file cannot be parsed", str(error).splitlines()[0]) from None
    if frame.empty:
        raise table_error(party, path, "the table has a header but no rows")
    check_numeric(frame, party, path)
    return frame


def check_numeric(frame: pd.DataFrame, party: str, path: Path) -> None:
    for column in frame.columns:
        values = frame[column]
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            numeric = pd.to_numeric(values, errors="coerce")
            bad = values[numeric.isna() & values.notna()]
            if len(bad):
                row = int(bad.index[0])
                raise table_error(party, path, f"column {column!r} has a non-numeric value at data row {row + 1}",
                                  f"the cell holds {bad.iloc[0]!r}")
            frame[column] = numeric
        missing = ~np.isfinite(frame[column].to_numpy(dtype=float))
        if missing.any():
            row = int(np.flatnonzero(missing)[0])
            raise table_error(party, path, f"column {column!r} has a missing or infinite value at data row {row + 1}")
