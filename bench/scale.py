"""The demo job at growing sizes: time, bytes and peak memory per party, to show linear growth.

    .venv/bin/python bench/scale.py [--rows 10000 100000 1000000] [--epochs 1]

Each size is one ``cotrain run`` (3 banks, logistic regression on the 8 demo features, the
default dealer suite over loopback) with ``data.rows`` = rows / 3 per bank and one epoch. It
prints, per size: the job's wall time and training time, every party's bytes (sent +
received, the dealer's tuples included) and peak resident memory, and the per-row figures,
which stay flat when growth is linear. Each run's summary stays under ``--output``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTIES = 3


def run_job(rows: int, epochs: int, output: Path, extra: list[str]) -> dict:
    run_id = f"scale-{rows}"
    command = [sys.executable, "-m", "launch", "run", f"num_parties={PARTIES}", f"data.rows={rows // PARTIES}",
               f"train.epochs={epochs}", f"output_dir={output}", f"run_id={run_id}", *extra]
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    summary_path = output / run_id / "summary.json"
    if finished.returncode != 0 or not summary_path.is_file():
        raise SystemExit(f"the {rows}-row job failed (exit {finished.returncode}):\n{finished.stderr[-3000:]}")
    summary = json.loads(summary_path.read_text())
    summary["command_wall_s"] = wall
    return summary


def rows_of(summary: dict) -> int:
    return sum(party["rows"] for party in summary["parties"])


# the batch and the rounds show which job ran: a lost batch_size override trains at the
# demo's 128, with about 6x the rounds and the CPU for nearly the same bytes per row
HEADER = (f"{'rows':>9} {'batch':>6} {'wall s':>8} {'train s':>8} {'us/row':>7}  per party: bytes sent+received "
          "(per row per epoch), peak RSS, CPU seconds (torch threads), rounds")


def table_row(summary: dict, epochs: int) -> str:
    rows = rows_of(summary)
    per_row_us = summary["training_s"] / (rows * epochs) * 1e6
    parties = "  ".join(
        f"{p['name']} {(p['bytes_sent'] + p['bytes_received']) / 1e6:8.1f} MB "
        f"({(p['bytes_sent'] + p['bytes_received']) / (rows * epochs):5.0f} B) "
        f"{(p['peak_rss_bytes'] or 0) / 2**20:5.0f} MiB {p['cpu_s'] or 0:6.1f} s ({p['threads'] or '?'}) "
        f"{p['rounds']:6d}"
        for p in summary["per_party"])
    return (f"{rows:>9} {summary['batch_size']:>6} {summary['job_wall_s']:8.1f} {summary['training_s']:8.1f} "
            f"{per_row_us:7.1f}  {parties}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None, help="where the runs write (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", help="extra cotrain settings, e.g. train.batch_size=256")
    args = parser.parse_args()
    output = args.output or Path(tempfile.mkdtemp(prefix="cotrain-scale-"))
    print(HEADER, flush=True)
    for rows in args.rows:
        print(table_row(run_job(rows, args.epochs, output, args.overrides), args.epochs), flush=True)
    print(f"(summaries under {output})")


if __name__ == "__main__":
    main()
