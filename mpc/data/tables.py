"""Reading one party's own table, with errors that name the party, the file and the column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mpc.data.chunked import read_in_chunks


class DataError(ValueError):
    """A party's table cannot be used as it is."""


def read_table(path: str | Path, party: str) -> pd.DataFrame:
    """Read a CSV or Parquet file; every column must be numeric, finite and present."""
    path = Path(path)
    where = f"{party}: {path}"
    if not path.is_file():
        raise DataError(f"{where}: file not found")
    try:
        frame = read_in_chunks(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{where}: the file is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as error:
        raise DataError(f"{where}: cannot be parsed: {str(error).splitlines()[0]}") from None
    if frame.empty:
        raise DataError(f"{where}: the table has a header but no rows")
    _check_numeric(frame, where)
    return frame


def _check_numeric(frame: pd.DataFrame, where: str) -> None:
    for column in frame.columns:
        values = frame[column]
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            numeric = pd.to_numeric(values, errors="coerce")
            bad = values[numeric.isna() & values.notna()]
            if len(bad):
                row = int(bad.index[0])
                raise DataError(
                    f"{where}: column {column!r} has a non-numeric value {bad.iloc[0]!r} "
                    f"at data row {row + 1}"
                )
            frame[column] = numeric
        missing = ~np.isfinite(frame[column].to_numpy(dtype=float))
        if missing.any():
            row = int(np.flatnonzero(missing)[0])
            raise DataError(f"{where}: column {column!r} has a missing or infinite value at data row {row + 1}")
