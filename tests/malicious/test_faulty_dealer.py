"""A faulty dealer is caught by the triple sacrifice.

The dealer (a TEST-ONLY fault hook) makes c wrong in several triples and matmul triples
(c + 1, c + 2^40, c + a random odd or arbitrary 64-bit offset, at a random element, with a
MAC consistent with the wrong c, so only the sacrifice can see it). Each trial is the
fresh small computation of the detection tests (its matmul triple, then elementwise
triples), with its tuples fetched on demand. Every
party must raise CheatDetected('triple sacrifice') in exactly the trials that received a
corrupted tuple, before anything is revealed; the other trials must be right.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import spawn  # noqa: E402
from programs import faulty_dealer_trials  # noqa: E402

PARTIES = 3
TRIALS = 16
SEED = 2024


def corruptions() -> dict[int, int]:
    """Which triple-kind tuples the dealer corrupts (global index -> offset to c)."""
    rng = random.Random(SEED)
    offsets = [1, 1 << 40, rng.getrandbits(64) | 1, rng.getrandbits(64) or 2, (rng.getrandbits(60) | 1) << 3,
               1 << 63]
    # tuple 0 is the first trial's matmul triple; a trial uses about 10 triple-kind tuples
    # (its matmul triple first): space the faults so some trials stay honest
    faults = {0: rng.getrandbits(64) | 1}
    faults.update({11 + index * 17 + rng.randrange(6): offset for index, offset in enumerate(offsets)})
    return faults


@pytest.fixture(scope="module")
def outcome():
    collected, codes = spawn(faulty_dealer_trials, parties=PARTIES, trials=TRIALS, timeout_s=300,
                             dealer_kwargs={"fault": {"corrupt": corruptions(), "seed": SEED}})
    for rank in range(PARTIES + 1):
        status, value = collected.get(rank, ("missing", "no result"))
        assert status == "ok", f"rank {rank}: {value}"
    assert all(code == 0 for code in codes.values()), codes
    return [collected[rank][1] for rank in range(PARTIES)], collected[PARTIES][1]


def test_every_wrong_triple_is_caught_by_the_sacrifice(outcome):
    results, dealer = outcome
    faults = corruptions()
    assert dealer["corrupted"] == len(faults)  # every planned fault was dealt
    for rank, result in enumerate(results):
        assert len(result["trials"]) == TRIALS
        for index, first, last, status, detail in result["trials"]:
            corrupted = any(first <= n < last for n in faults)
            if corrupted:
                assert (status, detail) == ("detected", "triple sacrifice"), (rank, index, detail)
            else:
                assert status == "ok", (rank, index, detail)
                assert detail < 2e-3
    detected = sum(t[3] == "detected" for t in results[0]["trials"])
    assert detected == len(faults)
    assert 0 < detected < TRIALS  # honest trials ran between the faulty ones
    # the matmul triple (a trial's first triple-kind tuple) was among the caught ones
    assert any(t[1:4] == (0, 1, "detected") for t in results[0]["trials"])
    # every party stopped in the same trials
    assert len({tuple(t[3] for t in r["trials"]) for r in results}) == 1
