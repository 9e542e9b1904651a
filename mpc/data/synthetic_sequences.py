"""Synthetic transaction histories for the sequence demo: each customer's last 16 card
transactions as tokens (merchant category, amount bucket, hour bucket, channel, recency).

A compromised account ends in a burst of fraudulent transactions. Each bank sees its own
mix of two fraud patterns: card testing (tiny online payments at risky merchants) and cash-out
(large night-time purchases of electronics and gift cards). Bank 0, the model owner, sees
mostly card testing, the other banks mostly cash-out, so a model pre-trained at bank 0 has
something left to learn from the others. Every field of a burst transaction follows its
pattern only with some probability, and honest customers make risky-looking purchases too,
so the label is learnable but not trivial. Every table is reproducible from the seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mpc.data.synthetic import ID, LABEL, GeneratedFiles, write_vertical

LENGTH = 16
# token fields and their vocabulary sizes (the ids run 0..size-1)
VOCABULARY = {"merchant": 10, "amount": 8, "hour": 6, "channel": 3, "recency": 4}
RISKY_MERCHANTS = (7, 8, 9)  # electronics, gift cards, online gaming
ONLINE = 2  # channel ids: 0 chip, 1 contactless, 2 online
FRAUD_RATE = 0.1
PATTERN_FOLLOWED = 0.7  # each field of a burst transaction follows its pattern this often


@dataclass(frozen=True)
class SequenceProfile:
    """One bank's customers: where they shop, how much, online share, and its fraud mix."""

    merchants: np.ndarray  # probabilities over merchant categories
    amount_level: float
    online_rate: float
    cash_out_share: float  # share of compromised accounts that are cashed out (else card testing)


def sequence_profile(bank: int) -> SequenceProfile:
    rng = np.random.default_rng(20_011 + bank)
    merchants = rng.dirichlet(np.full(VOCABULARY["merchant"], 2.0))
    merchants[list(RISKY_MERCHANTS)] *= 0.3  # honest customers rarely shop there
    return SequenceProfile(merchants=merchants / merchants.sum(), amount_level=2.5 + 1.5 * rng.random(),
                           online_rate=0.15 + 0.2 * rng.random(), cash_out_share=0.15 if bank == 0 else 0.85)


def _honest(rng: np.random.Generator, profile: SequenceProfile, rows: int) -> dict[str, np.ndarray]:
    """Ordinary histories, oldest transaction first."""
    shape = (rows, LENGTH)
    level = profile.amount_level + rng.normal(0.0, 0.8, (rows, 1))
    days_ago = -np.sort(-rng.exponential(10.0, shape), axis=1)  # oldest first
    return {
        "merchant": rng.choice(VOCABULARY["merchant"], size=shape, p=profile.merchants),
        "amount": np.clip(np.rint(rng.normal(level, 1.0, shape)), 0, VOCABULARY["amount"] - 1),
        "hour": rng.choice(VOCABULARY["hour"], size=shape, p=[0.03, 0.09, 0.28, 0.3, 0.25, 0.05]),
        "channel": np.where(rng.random(shape) < profile.online_rate, ONLINE, rng.integers(0, 2, shape)),
        "recency": np.digitize(days_ago, [1.0, 7.0, 30.0]),
    }


def _burst(rng: np.random.Generator, fields: dict[str, np.ndarray], profile: SequenceProfile,
           customers: np.ndarray) -> None:
    """Overwrite the last 2..5 transactions of ``customers`` with a fraud burst, in place."""
    for customer in customers:
        cash_out = rng.random() < profile.cash_out_share
        for position in range(LENGTH - rng.integers(2, 6), LENGTH):
            pattern = {
                "merchant": rng.choice(RISKY_MERCHANTS[:2] if cash_out else RISKY_MERCHANTS),
                "amount": rng.integers(6, 8) if cash_out else 0,
                "hour": 0 if cash_out else rng.integers(0, 6),
                "channel": rng.integers(0, 2) if cash_out else ONLINE,
                "recency": 0,
            }
            for name, value in pattern.items():
                if rng.random() < PATTERN_FOLLOWED:
                    fields[name][customer, position] = value


def sequence_columns() -> list[str]:
    """The token columns of a sequence table, position by position: merchant_00, amount_00, ..."""
    return [f"{name}_{position:02d}" for position in range(LENGTH) for name in VOCABULARY]


def generate_sequences(bank: int, rows: int, seed: int, first_id: int = 0) -> pd.DataFrame:
    """``rows`` customers of bank ``bank``: an id, 16 transactions of token ids, the label."""
    profile = sequence_profile(bank)
    rng = np.random.default_rng([seed, bank, first_id, 16])
    fields = _honest(rng, profile, rows)
    fraud = rng.random(rows) < FRAUD_RATE
    _burst(rng, fields, profile, np.flatnonzero(fraud))
    columns = {f"{name}_{position:02d}": fields[name][:, position].astype(np.int64)
               for position in range(LENGTH) for name in VOCABULARY}
    return pd.DataFrame({ID: np.arange(first_id, first_id + rows, dtype=np.int64), **columns,
                         LABEL: fraud.astype(np.int64)})


def write_sequences(directory: Path, parties: int, rows: int, test_rows: int, seed: int) -> GeneratedFiles:
    """Each bank's customers in its own file; the held-out customers, drawn from the banks
    other than the owner (bank 0) whose data the model is fine-tuned on, go to bank 0."""
    directory.mkdir(parents=True, exist_ok=True)
    train = []
    for bank in range(parties):
        path = directory / f"bank{bank}_sequences.csv"
        generate_sequences(bank, rows, seed, first_id=bank * 10_000_000).to_csv(path, index=False)
        train.append(path)
    others = list(range(1, parties))
    held_out = [generate_sequences(bank, test_rows // len(others) + (1 if i < test_rows % len(others) else 0),
                                   seed + 1, first_id=bank * 10_000_000 + rows)
                for i, bank in enumerate(others)]
    test_path = directory / "heldout_sequences.csv"
    pd.concat(held_out, ignore_index=True).to_csv(test_path, index=False)
    return GeneratedFiles(train=train, test=[test_path])


def vertical_fields(parties: int) -> list[list[str]]:
    """The token columns each party holds in a vertical split: whole fields, dealt round-robin
    (with 2 parties, one holds merchant, hour and recency of every transaction, the other
    amount and channel), as an issuer and a payment processor would each log their own."""
    fields = list(VOCABULARY)
    return [[f"{name}_{position:02d}" for position in range(LENGTH) for name in fields[party::parties]]
            for party in range(parties)]


def write_vertical_sequences(directory: Path, parties: int, rows: int, test_rows: int, seed: int,
                             overlap: float = 1.0) -> GeneratedFiles:
    """The same ``rows`` customers' sequences at every party, each party holding some fields
    (``vertical_fields``), party 0 the label; held-out customers likewise, one file per party."""
    return write_vertical(directory, parties, rows, test_rows, seed, overlap, table=generate_sequences,
                          columns=vertical_fields(parties))
