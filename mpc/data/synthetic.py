"""Synthetic card transactions for the demo: one table per bank, each with its own habits.

Fraud follows a hidden logistic model with interactions (night-time card-not-present,
far-from-home bursts), so a linear model learns most of it and an MLP a little more. Every
table is reproducible from the seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

FEATURES = (
    "amount",
    "hour",
    "merchant_risk",
    "distance_from_home_km",
    "txn_velocity_24h",
    "card_present",
    "foreign",
    "account_age_days",
)
LABEL = "is_fraud"
ID = "id"


@dataclass(frozen=True)
class BankProfile:
    """How one bank's customers differ: spending level, travel, and its fraud base rate."""

    amount_log_mean: float
    distance_scale_km: float
    foreign_rate: float
    card_present_rate: float
    fraud_offset: float


def bank_profile(bank: int) -> BankProfile:
    """Deterministic but distinct profiles: bank 0 is a high-street bank, later ones vary."""
    rng = np.random.default_rng(10_007 + bank)
    return BankProfile(
        amount_log_mean=3.6 + 0.5 * rng.random(),
        distance_scale_km=8.0 + 25.0 * rng.random(),
        foreign_rate=0.02 + 0.08 * rng.random(),
        card_present_rate=0.45 + 0.35 * rng.random(),
        fraud_offset=0.5 * (rng.random() - 0.5),
    )


def _fraud_logit(frame: pd.DataFrame, profile: BankProfile) -> np.ndarray:
    night = ((frame["hour"] < 6) | (frame["hour"] >= 23)).to_numpy(float)
    log_amount = np.log1p(frame["amount"].to_numpy())
    not_present = 1.0 - frame["card_present"].to_numpy(float)
    far = np.log1p(frame["distance_from_home_km"].to_numpy())
    return (
        -5.9
        + profile.fraud_offset
        + 0.55 * (log_amount - 3.8)
        + 2.6 * frame["merchant_risk"].to_numpy()
        + 0.35 * far
        + 0.22 * frame["txn_velocity_24h"].to_numpy()
        + 1.1 * not_present
        + 0.9 * frame["foreign"].to_numpy()
        + 1.2 * night * not_present
        - 0.0009 * frame["account_age_days"].to_numpy()
    )


def generate_transactions(bank: int, rows: int, seed: int, first_id: int = 0) -> pd.DataFrame:
    """``rows`` transactions of bank ``bank`` with ids ``first_id, first_id + 1, ...``."""
    profile = bank_profile(bank)
    rng = np.random.default_rng([seed, bank, first_id])
    hour = rng.choice(24, size=rows, p=_hour_weights())
    frame = pd.DataFrame(
        {
            ID: np.arange(first_id, first_id + rows, dtype=np.int64),
            "amount": np.round(rng.lognormal(profile.amount_log_mean, 1.0, rows), 2),
            "hour": hour.astype(np.int64),
            "merchant_risk": np.round(rng.beta(1.5, 6.0, rows), 4),
            "distance_from_home_km": np.round(rng.exponential(profile.distance_scale_km, rows), 2),
            "txn_velocity_24h": rng.poisson(2.0, rows).astype(np.int64),
            "card_present": (rng.random(rows) < profile.card_present_rate).astype(np.int64),
            "foreign": (rng.random(rows) < profile.foreign_rate).astype(np.int64),
            "account_age_days": rng.integers(7, 3650, rows).astype(np.int64),
        }
    )
    probability = 1.0 / (1.0 + np.exp(-_fraud_logit(frame, profile)))
    frame[LABEL] = (rng.random(rows) < probability).astype(np.int64)
    return frame


def _hour_weights() -> np.ndarray:
    hours = np.arange(24)
    weights = 0.25 + np.exp(-((hours - 14) ** 2) / 30.0)
    return weights / weights.sum()


@dataclass(frozen=True)
class GeneratedFiles:
    """Where each party's training table and held-out table were written."""

    train: list[Path]
    test: list[Path]


def write_horizontal(directory: Path, parties: int, rows: int, test_rows: int, seed: int) -> GeneratedFiles:
    """Each bank gets its own customers (rows); the held-out set mixes all banks.

    The held-out rows go to party 0, who evaluates the model.
    """
    directory.mkdir(parents=True, exist_ok=True)
    train, test = [], []
    held_out = []
    for bank in range(parties):
        table = generate_transactions(bank, rows, seed, first_id=bank * 10_000_000)
        path = directory / f"bank{bank}.csv"
        table.to_csv(path, index=False)
        train.append(path)
        share = test_rows // parties + (1 if bank < test_rows % parties else 0)
        held_out.append(generate_transactions(bank, share, seed + 1, first_id=bank * 10_000_000 + rows))
    test_path = directory / "heldout.csv"
    pd.concat(held_out, ignore_index=True).to_csv(test_path, index=False)
    test.append(test_path)
    return GeneratedFiles(train=train, test=test)


def vertical_columns(parties: int) -> list[list[str]]:
    """Split the features across parties round-robin; party 0 also holds the label."""
    return [list(FEATURES[party::parties]) for party in range(parties)]


def write_vertical(directory: Path, parties: int, rows: int, test_rows: int, seed: int,
                   overlap: float = 1.0, table: Callable[..., pd.DataFrame] = generate_transactions,
                   columns: Sequence[Sequence[str]] | None = None) -> GeneratedFiles:
    """Each party holds some columns of ``rows`` customers; party 0 also holds the label.
    ``table(bank, rows, seed, first_id=...)`` makes the customers (card transactions unless
    given) and ``columns`` says which party holds which (``vertical_columns`` unless given).

    With ``overlap`` 1 every party has the same customers in the same order. Below 1, a share
    ``overlap`` of each party's customers are held by every party, the rest by that party
    alone, and each party's rows are in an order of its own: only private set intersection
    of the ids lines them up.
    """
    directory.mkdir(parents=True, exist_ok=True)
    train, test = [], []
    first_id = 0
    for count, suffix, paths, table_seed in ((rows, "", train, seed), (test_rows, "_heldout", test, seed + 1)):
        shared = count if overlap == 1 else int(round(count * overlap))
        customers = shared + parties * (count - shared)
        full = table(0, customers, table_seed, first_id=first_id)
        first_id += customers
        for party, held_columns in enumerate(columns or vertical_columns(parties)):
            keep = [ID, *held_columns, *([LABEL] if party == 0 else [])]
            own = np.arange(shared + party * (count - shared), shared + (party + 1) * (count - shared))
            held = np.concatenate([np.arange(shared), own])
            if overlap != 1:
                held = np.random.default_rng([table_seed, party, 7]).permutation(held)
            path = directory / f"party{party}{suffix}.csv"
            full.iloc[held][keep].to_csv(path, index=False)
            paths.append(path)
    return GeneratedFiles(train=train, test=test)
