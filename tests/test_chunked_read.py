"""Reading tables in chunks gives what a whole-file read gives, at every chunk boundary."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mpc.data.chunked import read_in_chunks
from mpc.data.synthetic import generate_transactions
from mpc.data.tables import DataError, read_table


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_chunks_join_to_the_whole_file(tmp_path, suffix):
    frame = generate_transactions(1, 1000, seed=2)
    frame["offset"] = 1.7e9 + np.arange(1000) * 0.5  # timestamp-like column beside small ones
    path = tmp_path / f"t.{suffix}"
    frame.to_csv(path, index=False) if suffix == "csv" else frame.to_parquet(path, row_group_size=300)
    whole = pd.read_csv(path) if suffix == "csv" else pd.read_parquet(path)
    for chunk_rows in (7, 300, 5000):
        pd.testing.assert_frame_equal(read_in_chunks(path, chunk_rows), whole)


def test_column_types_agree_across_chunks(tmp_path):
    rows = ["a,b,c"] + [f"{i},{i},1" for i in range(10)] + ["10,10.5,1", "11,11,x"]
    path = tmp_path / "mixed.csv"
    path.write_text("\n".join(rows) + "\n")
    chunked = read_in_chunks(path, chunk_rows=4)
    assert chunked["a"].dtype == np.int64 and chunked["b"].dtype == np.float64  # 10.5 in the third chunk
    assert chunked["b"].tolist() == pd.read_csv(path)["b"].tolist()
    # the non-numeric value in the last chunk is reported at its row of the whole file
    with pytest.raises(DataError, match=r"column 'c' has a non-numeric value at data row 12"):
        read_table(path, "bank0")


def test_empty_parquet_keeps_its_columns(tmp_path):
    path = tmp_path / "empty.parquet"
    pd.DataFrame({"a": pd.Series([], dtype="int64")}).to_parquet(path)
    with pytest.raises(DataError, match="header but no rows"):
        read_table(path, "bank0")
