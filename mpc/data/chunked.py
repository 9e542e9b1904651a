"""Reading a CSV or Parquet table in chunks, so a large file is held in memory about once.

A whole-file read holds the parsed file and the finished table at the same time (the CSV
parser's blocks before they are joined; Arrow's table before pandas' copy of it). Here each
chunk is parsed, split into its columns and dropped; each column is joined once at the end,
so the peak is about the table plus one column. CSV goes through pandas' C parser, chunk by
chunk, so values, missing-value markers and parse errors are those of a whole-file read
(pyarrow's CSV reader fixes each column's type from the first block, and a column that
turns fractional later would fail); Parquet goes through pyarrow's record batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

CHUNK_ROWS = 65_536
PARQUET_SUFFIXES = (".parquet", ".pq")


def read_in_chunks(path: str | Path, chunk_rows: int = CHUNK_ROWS) -> pd.DataFrame:
    """The table at ``path`` as a DataFrame with a default index, read ``chunk_rows`` at a time.

    A column keeps the type a whole-file read would give it (integer chunks beside fractional
    ones become float64; any non-numeric chunk makes it object), so later checks see the same
    values at the same row numbers.
    """
    path = Path(path)
    chunks = _parquet_chunks(path, chunk_rows) if path.suffix.lower() in PARQUET_SUFFIXES else _csv_chunks(path, chunk_rows)
    names: list[str] | None = None
    pieces: dict[str, list[np.ndarray]] = {}
    for chunk in chunks:
        if names is None:
            names = [str(name) for name in chunk.columns]
            pieces = {name: [] for name in names}
        for name, column in zip(names, chunk.columns):
            pieces[name].append(chunk[column].to_numpy())
        del chunk
    if names is None:
        return pd.DataFrame()
    columns = {}
    for name in names:
        parts = pieces.pop(name)  # dropped as soon as the column is joined
        columns[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        del parts
    return pd.DataFrame(columns, copy=False)


def _csv_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    with pd.read_csv(path, chunksize=chunk_rows) as reader:
        yield from reader


def _parquet_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    table = pq.ParquetFile(path)
    empty = True
    for batch in table.iter_batches(batch_size=chunk_rows):
        empty = False
        yield batch.to_pandas()
    if empty:  # no row groups: still report the columns
        yield table.schema_arrow.empty_table().to_pandas()
