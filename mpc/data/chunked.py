"""Reading a CSV or Parquet table so that a large file is held in memory about once.

A whole-file read holds the parsed file and the finished table at the same time (the CSV
parser's blocks before they are joined; Arrow's table beside pandas' copy of it). Here a CSV
is parsed a chunk of rows at a time, each chunk split into its columns and dropped, and each
column joined once at the end; a Parquet file, being stored by column, is read one column at
a time (``ParquetFile.iter_batches`` would decode a whole row group, often the whole file,
at once). The peak is about the table plus one column. CSV goes through pandas' C parser, so
values, missing-value markers and parse errors are those of a whole-file read (pyarrow's CSV
reader fixes each column's type from the first block, and a column that turns fractional
later would fail).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

CHUNK_ROWS = 65_536
PARQUET_SUFFIXES = (".parquet", ".pq")


def read_in_chunks(path: str | Path, chunk_rows: int = CHUNK_ROWS) -> pd.DataFrame:
    """The table at ``path`` as a DataFrame with a default index.

    A column keeps the type a whole-file read gives it (integer chunks beside fractional ones
    become float64; any non-numeric chunk makes it object), so later checks see the same
    values at the same row numbers.
    """
    path = Path(path)
    columns = _parquet_columns(path) if path.suffix.lower() in PARQUET_SUFFIXES else _csv_columns(path, chunk_rows)
    return pd.DataFrame(columns, copy=False)


def _csv_columns(path: Path, chunk_rows: int) -> dict[str, np.ndarray]:
    pieces: dict[str, list[np.ndarray]] = {}
    with pd.read_csv(path, chunksize=chunk_rows) as reader:
        for chunk in reader:
            for name in chunk.columns:
                pieces.setdefault(str(name), []).append(chunk[name].to_numpy())
            del chunk
    columns = {}
    for name in list(pieces):
        parts = pieces.pop(name)  # dropped as soon as the column is joined
        columns[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return columns


def _parquet_columns(path: Path) -> dict[str, np.ndarray]:
    table = pq.ParquetFile(path)
    schema = table.schema_arrow
    # a pandas index saved as a column is not data (pd.read_parquet makes it the index)
    index = {entry for entry in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(entry, str)}
    return {name: table.read(columns=[name]).column(0).to_pandas().to_numpy()
            for name in schema.names if name not in index}
