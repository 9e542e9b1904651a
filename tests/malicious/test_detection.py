"""A cheating party is caught: 200 randomized tampering trials in one set of processes.

Each trial is a fresh small computation, y = relu(X @ W) * s (three authenticated inputs
from three owners, a matrix product, a comparison with its bit products, an elementwise
product, two truncations, a reveal). In every trial but each 10th (207 of 230), one randomly chosen
party deviates once, at a random step: it alters its share in a multiplication (including
the bit products inside the comparison) / matmul / truncation / comparison / reveal
opening, its MAC-check opening after committing, a coin-toss seed it opens, its share in
an opening of the check of dealt tuples, a tuple share (value or MAC) it received
from the dealer for a triple, a matmul triple, a truncation pair or the authenticated
random bits of a comparison, or, as an input owner, sends one peer a different masked
input. Every honest party (and the cheater, which runs the checks honestly) must raise
CheatDetected before the result is returned; the honest trials must be right to within
the fixed-point error.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import spawn  # noqa: E402
from programs import detection_trials  # noqa: E402

TRIALS = 230
HONEST_EVERY = 10  # 23 honest trials, 207 cheating ones
PARTIES = 3


@pytest.fixture(scope="module")
def outcome():
    collected, codes = spawn(detection_trials, parties=PARTIES, trials=TRIALS, honest_every=HONEST_EVERY,
                             timeout_s=400)
    for rank in range(PARTIES + 1):
        status, value = collected.get(rank, ("missing", "no result"))
        assert status == "ok", f"rank {rank}: {value}"
    assert all(code == 0 for code in codes.values()), codes
    return [collected[rank][1] for rank in range(PARTIES)]


def test_every_tampering_is_detected_by_every_party(outcome):
    cheating = TRIALS - len(range(0, TRIALS, HONEST_EVERY))
    assert cheating >= 200
    for rank, result in enumerate(outcome):
        assert result["undetected"] == [], f"party {rank} missed: {result['undetected'][:5]}"
        assert len(result["detected"]) == cheating
    # every party stopped on the same trials
    assert len({tuple(t[0] for t in r["detected"]) for r in outcome}) == 1
    targets = {t[2] for t in outcome[0]["detected"]}
    assert targets == {"mul", "matmul", "trunc", "compare", "reveal", "open", "coins", "tuple-check", "input",
                       "tuple:triple", "tuple:matmul", "tuple:trunc", "tuple:bits"}


def test_named_checks_and_blame(outcome):
    for result in outcome:
        for index, cheater, target, check, party in result["detected"]:
            if target == "input":
                # equivocation: the peers compare what they received from the owner
                assert check in ("broadcast consistency", "verdict", "MAC check")
            if check == "broadcast consistency":
                assert party == cheater
            if check == "MAC-check commitment":
                assert party == cheater and target == "open"
            if check == "coin-toss commitment":
                assert party == cheater and target == "coins"


def test_honest_trials_are_exact_to_fixed_point(outcome):
    # y = relu(X @ W) * s with |X| <= 4, |W| <= 2, |s| <= 3: inputs are rounded to 2^-16,
    # each truncation is off by at most 1 ulp (2^-16); the products magnify the input
    # rounding by at most |W|*D + |X|*D per term (< 3 * 2 * 2^-17 * 4 * 3) so 2e-3 is a
    # generous bound; the measured error is ~1e-4.
    for result in outcome:
        assert result["honest_errors"] == []
        assert result["honest"] == len(range(0, TRIALS, HONEST_EVERY))
        assert result["max_error"] < 2e-3
