"""Peak memory of reading one party's table: a whole-file read against the chunked read.

    .venv/bin/python bench/read_bench.py [--rows 1000000] [--columns 10]

Writes a synthetic table (an int64 id, float64 columns with a timestamp-like offset) as CSV
and as Parquet, then reads each in a fresh process and prints how much resident memory the
read and the table checks added at their peak (VmHWM, reset after the imports) and kept. "whole
file" is what ``mpc.data.tables.read_table`` did before (``pd.read_csv`` / ``pd.read_parquet``);
"chunked" is ``read_table`` now (``mpc.data.chunked``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent

_READERS = {
    "whole file": "frame = pd.read_parquet(path) if path.endswith('.parquet') else pd.read_csv(path)\n"
                  "check_numeric(frame, 'bench')",
    "chunked": "frame = read_table(path, 'bench')",
}
# everything imported first, then the kernel's high-water mark reset (Linux: clear_refs 5),
# so the peak is the read's own, not the imports'
_MEASURE = """import sys
sys.path.insert(0, {root!r})
import pandas as pd
from mpc.data.tables import check_numeric, read_table

def status(field):
    line = next(l for l in open('/proc/self/status') if l.startswith(field + ':'))
    return int(line.split()[1]) / 1024

path = {path!r}
with open('/proc/self/clear_refs', 'w') as refs:
    refs.write('5')
before = status('VmRSS')
{read}
print(status('VmHWM') - before, status('VmRSS') - before)
"""


def write_table(directory: Path, rows: int, columns: int) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"id": np.arange(rows, dtype=np.int64)})
    for index in range(1, columns):
        offset = 1.7e9 if index == 1 else 0.0
        frame[f"x{index}"] = np.round(offset + rng.normal(0, 10 ** (index % 4), rows), 4)
    paths = {"csv": directory / "table.csv", "parquet": directory / "table.parquet"}
    frame.to_csv(paths["csv"], index=False)
    frame.to_parquet(paths["parquet"])
    return paths


def read_rss_mb(reader: str, path: Path) -> tuple[float, float]:
    """(peak, retained) resident MiB that reading ``path`` added, in a fresh process."""
    code = _MEASURE.format(root=str(ROOT), path=str(path), read=_READERS[reader])
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    peak, retained = (float(value) for value in out.split()[-2:])
    return peak, retained


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--columns", type=int, default=10)
    args = parser.parse_args(argv)
    table_mb = args.rows * args.columns * 8 / 2**20
    results: dict = {"rows": args.rows, "columns": args.columns, "table_mb": table_mb}
    print(f"{args.rows:,} rows x {args.columns} columns ({table_mb:.0f} MiB as 8-byte values); "
          "resident memory the read added:")
    with tempfile.TemporaryDirectory() as scratch:
        paths = write_table(Path(scratch), args.rows, args.columns)
        for kind, path in paths.items():
            for reader in ("whole file", "chunked"):
                peak, retained = read_rss_mb(reader, path)
                results[f"{kind} {reader}"] = {"peak_mb": peak, "retained_mb": retained}
                print(f"  {kind:<8} {reader:<11} peak {peak:6.0f} MiB ({peak / table_mb:.2f}x the table), "
                      f"kept {retained:6.0f} MiB", flush=True)
    return results


if __name__ == "__main__":
    json.dumps(main())
