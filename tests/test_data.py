"""Reading, checking and describing a party's own table, without any peers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mpc.data.schema import TableMeta, check_horizontal, check_vertical
from mpc.data.synthetic import FEATURES, LABEL, generate_transactions, write_horizontal, write_vertical
from mpc.data.tables import DataError, read_table


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_reads_csv_and_parquet(tmp_path):
    frame = generate_transactions(0, 50, seed=1)
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    assert read_table(tmp_path / "t.csv", "bank0").shape == frame.shape
    assert read_table(tmp_path / "t.parquet", "bank0").equals(frame)


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "the file is empty"),
        ("a,b,is_fraud\n", "header but no rows"),
        ("a,b,is_fraud\n1,2,0\n3,x,1\n", "column 'b' has a non-numeric value at data row 2 (the cell holds 'x')"),
        ("a,b,is_fraud\n1,,0\n", "column 'b' has a missing or infinite value at data row 1"),
        ("a,b,is_fraud\n1,2,0\n1,nan,0\n", "column 'b' has a missing or infinite value at data row 2"),
        ('a,b\n1,2\n"3,4\n', "cannot be parsed"),
    ],
)
def test_bad_tables_name_party_file_and_column(tmp_path, content, message):
    path = write(tmp_path / "bad.csv", content)
    with pytest.raises(DataError) as error:
        read_table(path, "bank2")
    assert str(error.value).startswith(f"bank2: {path}")
    assert message in str(error.value)
    # what the other parties receive names the party and the problem, never the path or a cell
    public = error.value.public
    assert public.startswith("bank2: ") and str(path) not in public and "'x'" not in public
    assert message.split(" (")[0] in public


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"bank1: .*nope.csv: data file not found"):
        read_table(tmp_path / "nope.csv", "bank1")


def meta(party: str, columns: list[str], rows: int = 10, kinds: list[str] | None = None) -> TableMeta:
    return TableMeta(party, tuple(columns), tuple(kinds or ["float"] * len(columns)), rows)


def test_horizontal_schema_agreement_and_mismatches():
    columns = ["id", "amount", "hour", "is_fraud"]
    assert check_horizontal([meta("a", columns), meta("b", columns)], "is_fraud", "id") == ("amount", "hour")
    with pytest.raises(DataError, match="schema mismatch: b lacks column 'hour'"):
        check_horizontal([meta("a", columns), meta("b", ["id", "amount", "is_fraud"])], "is_fraud", "id")
    with pytest.raises(DataError, match="schema mismatch: b has unexpected column 'extra'"):
        check_horizontal([meta("a", columns), meta("b", columns + ["extra"])], "is_fraud", "id")
    with pytest.raises(DataError, match=r"a: label column 'is_fraud' \(data.label\) is missing"):
        check_horizontal([meta("a", columns[:-1]), meta("b", columns[:-1])], "is_fraud", "id")


def test_vertical_schema_checks():
    good = [meta("a", ["id", "x", "is_fraud"]), meta("b", ["id", "y"])]
    assert check_vertical(good, "is_fraud", 0, "id") == [("x",), ("y",)]
    with pytest.raises(DataError, match=r"b: id column 'id' \(data.id_column\) is missing"):
        check_vertical([good[0], meta("b", ["y"])], "is_fraud", 0, "id")
    with pytest.raises(DataError, match="b has 9 rows, a has 10"):
        check_vertical([good[0], meta("b", ["id", "y"], rows=9)], "is_fraud", 0, "id")
    with pytest.raises(DataError, match="column 'x' is held by both a and b"):
        check_vertical([good[0], meta("b", ["id", "x"])], "is_fraud", 0, "id")
    with pytest.raises(DataError, match=r"a: holds the label .* but has no label column 'is_fraud' \(data.label\)"):
        check_vertical([meta("a", ["id", "x"]), meta("b", ["id", "y", "is_fraud"])], "is_fraud", 0, "id")


def test_generator_is_reproducible_and_realistic():
    first, second = generate_transactions(1, 5000, seed=7), generate_transactions(1, 5000, seed=7)
    pd.testing.assert_frame_equal(first, second)
    assert set(FEATURES) | {LABEL, "id"} == set(first.columns)
    rates = [generate_transactions(bank, 40_000, seed=3)[LABEL].mean() for bank in range(5)]
    assert all(0.005 <= rate <= 0.03 for rate in rates), rates
    means = [generate_transactions(bank, 5000, seed=3)["amount"].mean() for bank in range(3)]
    assert len({round(m) for m in means}) == 3  # each bank spends differently


def test_partition_writers(tmp_path):
    horizontal = write_horizontal(tmp_path / "h", parties=3, rows=100, test_rows=60, seed=0)
    assert len(horizontal.train) == 3 and len(horizontal.test) == 1
    assert len(pd.read_csv(horizontal.test[0])) == 60
    vertical = write_vertical(tmp_path / "v", parties=3, rows=100, test_rows=60, seed=0)
    tables = [pd.read_csv(path) for path in vertical.train]
    assert all((t["id"] == tables[0]["id"]).all() for t in tables)
    assert LABEL in tables[0].columns and all(LABEL not in t.columns for t in tables[1:])
    assert sorted(c for t in tables for c in t.columns if c not in ("id", LABEL)) == sorted(FEATURES)
