"""Real-shaped tables for the data tests, and an independent float64 computation of the pipeline.

A table here has what bank tables have and demo data lacks: a column whose std is 1e-6 of its
mean beside one near 1e12, a timestamp offset (about 1.7e9 with hours of spread), amounts in
cents, a constant column and an id column named ``patient_id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mpc.data.config import DataConfig
from mpc.data.preprocessing import Preprocessing
from mpc.data.statistics import CONSTANT_RELATIVE_STD

ID = "patient_id"
LABEL = "outcome"
CONFIG = DataConfig(label=LABEL, id_column=ID)
FEATURES = ("timestamp", "calibrated", "balance_cents", "account_number", "amount", "constant")
OVERRIDES = [f"data.label={LABEL}", f"data.id_column={ID}"]


def real_shaped_table(rows: int, seed: int, first_id: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    timestamp = 1.7e9 + rng.normal(0, 6 * 3600, rows)  # seconds, about six hours of spread
    calibrated = 1000.0 + rng.normal(0, 1e-3, rows)  # std = 1e-6 x mean
    balance = np.round(rng.lognormal(10, 1, rows)) * 100  # cents
    account = 5e11 + rng.normal(0, 5e10, rows)  # numeric ids used as a feature, ~1e12
    amount = rng.normal(0, 1, rows)
    logit = (1.5 * (timestamp - 1.7e9) / (6 * 3600) - 2.0 * (calibrated - 1000.0) / 1e-3
             + 0.8 * np.log(balance / 2.2e6) + 0.5 * amount - 1.0)
    outcome = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame({ID: np.arange(first_id, first_id + rows), "timestamp": timestamp, "calibrated": calibrated,
                         "balance_cents": balance, "account_number": account, "amount": amount,
                         "constant": np.full(rows, 42.0), LABEL: outcome})


@dataclass
class Files:
    train: list[str]  # one per party
    test: list[str]  # one per party; in a horizontal split only party 0 holds the held-out rows ("" elsewhere)


def write_horizontal(directory: Path, parties: int, rows: int, test_rows: int, seed: int = 0) -> Files:
    directory.mkdir(parents=True, exist_ok=True)
    train = []
    for party in range(parties):
        path = directory / f"party{party}.csv"
        real_shaped_table(rows, seed + party, first_id=party * rows).to_csv(path, index=False)
        train.append(str(path))
    heldout = directory / "heldout.csv"
    real_shaped_table(test_rows, seed + 100, first_id=10**6).to_csv(heldout, index=False)
    return Files(train, [str(heldout)] + [""] * (parties - 1))


def write_vertical(directory: Path, parties: int, rows: int, test_rows: int, seed: int = 0) -> Files:
    """The same patients at every party, each holding some columns; party 0 holds the label."""
    directory.mkdir(parents=True, exist_ok=True)
    groups = [list(FEATURES[i::parties]) for i in range(parties)]
    files = Files([], [])
    for kind, table in (("train", real_shaped_table(rows, seed)), ("test", real_shaped_table(test_rows, seed + 100))):
        for party, group in enumerate(groups):
            path = directory / f"{kind}{party}.csv"
            table[[ID, *group, *([LABEL] if party == 0 else [])]].to_csv(path, index=False)
            getattr(files, kind).append(str(path))
    return files


def parties_override(files: Files) -> str:
    specs = [f"{{name:bank{i},data:{train}" + (f",test_data:{test}" if test else "") + "}"
             for i, (train, test) in enumerate(zip(files.train, files.test))]
    return "parties=[" + ",".join(specs) + "]"


def float64_preprocessing(table: pd.DataFrame, config: DataConfig, columns: list[str] | None = None) -> Preprocessing:
    """The scaling a plaintext float64 pipeline computes on the pooled ``table`` (numpy, one pass
    over the pooled rows: independent of the secure sums)."""
    columns = columns or [c for c in table.columns if c not in (config.label, config.id_column)]
    values = table[columns].to_numpy(np.float64)
    mean, std = values.mean(0), values.std(0)
    constant = std <= CONSTANT_RELATIVE_STD * np.abs(mean)
    keep = [i for i in range(len(columns)) if not constant[i]]
    return Preprocessing([columns[i] for i in keep], [float(mean[i]) for i in keep], [float(std[i]) for i in keep],
                         config.label, config.id_column, [c for c, flag in zip(columns, constant) if flag])
