"""A real table split across three parties: secure vs plaintext gaps and revealed statistics.

sklearn's breast-cancer table (569 patients, 30 measurements, columns with std ~0.003 beside
~500) plus a timestamp-like column (1.7e9 seconds with a month of spread), split row-wise into
three party CSVs and a held-out CSV kept by the first party. It prints:

- the four signed gaps (secure minus plaintext: AUC, PR-AUC, accuracy, loss) of a
  ``protocol=tfp`` logistic-regression job on those files;
- the largest relative error of the revealed pooled means and stds against float64 pooled
  statistics of the same rows (a 3-party session that only shares the data).

Run it against any checkout to compare (``PYTHONPATH`` picks the code measured):

    PYTHONPATH=$PWD .venv/bin/python -m bench.real_table [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer

import mpc
from launch.cli import run
from mpc.data.config import DataConfig
from protocols import ProtocolConfig

LABEL = "benign"
PARTIES = 3
METRICS = ("auc", "pr_auc", "accuracy", "loss")


def write_tables(directory: Path, seed: int = 0) -> tuple[list[Path], Path]:
    """Three party CSVs and a held-out CSV (about 30 % of the rows)."""
    cancer = load_breast_cancer(as_frame=True)
    frame = cancer.data.copy()
    rng = np.random.default_rng(seed)
    frame["recorded_at"] = 1.7e9 + rng.normal(0, 30 * 86400, len(frame))  # seconds since 1970
    frame[LABEL] = cancer.target.to_numpy()
    frame = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    directory.mkdir(parents=True, exist_ok=True)
    heldout = directory / "heldout.csv"
    cut = int(0.3 * len(frame))
    frame.iloc[:cut].to_csv(heldout, index=False)
    paths = []
    for party, rows in enumerate(np.array_split(np.arange(cut, len(frame)), PARTIES)):
        path = directory / f"hospital{party}.csv"
        frame.iloc[rows].to_csv(path, index=False)
        paths.append(path)
    return paths, heldout


def _revealed(paths: list[str], heldout: str, crypten, rank):
    from mpc.data.sharing import share_horizontal

    train, _, scaling = share_horizontal(crypten, DataConfig(label=LABEL), paths[rank], heldout if rank == 0 else None,
                                         f"hospital{rank}")
    names = getattr(scaling, "features", train.feature_names)
    return list(names), np.asarray(scaling.mean, np.float64).tolist(), np.asarray(scaling.std, np.float64).tolist()


def statistics_error(paths: list[Path], heldout: Path) -> dict:
    """Largest relative error of the revealed mean and std, per statistic, and the worst column."""
    sys.path.insert(0, str(Path(mpc.__file__).resolve().parent.parent / "tests"))
    from sessions import run_parties

    names, mean, std = run_parties(functools.partial(_revealed, [str(p) for p in paths], str(heldout)),
                                   world=PARTIES, timeout_s=600)[0]
    pooled = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)[names].to_numpy(np.float64)
    errors = {}
    for key, got, want in (("mean", mean, pooled.mean(0)), ("std", std, pooled.std(0))):
        relative = np.abs(np.asarray(got) - want) / np.abs(want)
        worst = int(np.argmax(relative))
        errors[key] = {"max_relative_error": float(relative[worst]), "column": names[worst]}
    return errors


def secure_gaps(paths: list[Path], heldout: Path, output: Path) -> dict:
    specs = [f"{{name:hospital{i},data:{p}" + (f",test_data:{heldout}" if i == 0 else "") + "}"
             for i, p in enumerate(paths)]
    settings = [f"output_dir={output}", "run_id=real-table", "protocol=tfp", f"data.label={LABEL}",
                f"num_parties={PARTIES}", "parties=[" + ",".join(specs) + "]",
                "transport.timeout_s=300", "transport.connect_timeout_s=300", "launch.timeout_s=1200"]
    if "allow_insecure" in {f.name for f in dataclasses.fields(ProtocolConfig)}:
        settings.append("protocol.allow_insecure=true")  # tfp on the parties' own files: a benchmark
    if run(settings) != 0:
        raise SystemExit("the secure job failed")
    summary = json.loads((output / "real-table" / "summary.json").read_text())
    secure, plain = summary["secure"], summary["plaintext"]
    return {"secure": {m: secure[m] for m in METRICS}, "plaintext": {m: plain[m] for m in METRICS},
            "gap": {m: secure[m] - plain[m] for m in METRICS}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the tables and the job's outputs")
    arguments = parser.parse_args(argv)
    root = arguments.out or Path(tempfile.mkdtemp(prefix="real-table-"))
    paths, heldout = write_tables(root / "tables")
    stats = statistics_error(paths, heldout)
    gaps = secure_gaps(paths, heldout, root / "outputs")
    print(f"\nreal table (breast cancer + timestamp, {PARTIES} parties), code at {Path(mpc.__file__).parent.parent}")
    print(f"  {'':<10}" + "".join(f"{m:>10}" for m in METRICS))
    for row, sign in (("secure", ""), ("plaintext", ""), ("gap", "+")):
        print(f"  {row:<10}" + "".join(f"{gaps[row][m]:>{sign}10.4f}" for m in METRICS))
    for key, found in stats.items():
        print(f"  revealed {key:<4} max relative error {found['max_relative_error']:.2e} ({found['column']!r})")
    print(json.dumps({"statistics": stats, **gaps}))


if __name__ == "__main__":
    main()
