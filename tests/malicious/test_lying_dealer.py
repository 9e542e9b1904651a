"""Nothing the dealer deals is trusted: a dealer lying about any one kind of tuple is caught.

One set of processes (3 parties and a ``LyingDealer``, see ``lying_dealer.py``). For each
kind the dealer deals (Beaver triples, matmul, batched matmul and convolution triples,
truncation pairs, comparison bits,
input masks, private-reveal masks) it corrupts the first tuple of that kind in each of 20
tiny computations, keeping MACs consistent; every party must stop each of them with
``CheatDetected`` naming the check and the tuple kind, before anything is revealed. Then
the dealer is honest and one computation per kind must come out right.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import run_ok, spawn  # noqa: E402
from lying_dealer import LyingCorrections, LyingDealer  # noqa: E402
from programs import lying_dealer_trials, steering_request  # noqa: E402

PARTIES = 3
TRIALS = 20
KINDS = ["triple", "matmul", "bmatmul", "conv", "trunc", "bits", "input", "private"]
CHECKS = {"triple": ("triple sacrifice", "Beaver triple"), "matmul": ("triple sacrifice", "a matmul triple"),
          "bmatmul": ("triple sacrifice", "batched matmul triple"), "conv": ("triple sacrifice", "convolution triple"),
          "trunc": ("bit sacrifice", "truncation pair"), "bits": ("bit sacrifice", "comparison mask"),
          "input": ("mask check", "input mask"), "private": ("mask check", "private-reveal mask")}
SEED_LIES = ("correction", "seed", "position")


@pytest.fixture(scope="module")
def outcome():
    return run_ok(lying_dealer_trials, parties=PARTIES, kinds=KINDS, trials=TRIALS, timeout_s=300,
                  dealer_type=LyingDealer, dealer_kwargs={"plan": [(k, TRIALS) for k in KINDS], "seed": 7})


def test_every_lie_is_caught_by_every_party_naming_check_and_kind(outcome):
    counts = {}
    for rank, result in enumerate(outcome):
        assert len(result["lied"]) == TRIALS * len(KINDS)
        for kind, status, check, message in result["lied"]:
            assert status == "detected", (rank, kind, message)
            assert check == CHECKS[kind][0] and CHECKS[kind][1] in message, (rank, kind, check, message)
            counts[kind] = counts.get(kind, 0) + (rank == 0)
    assert counts == {kind: TRIALS for kind in KINDS}
    print(f"\ndetected per kind (of {TRIALS}, by each of {PARTIES} parties): {counts}; "
          f"the parties' side took {outcome[0]['seconds']:.1f} s")


def test_honest_dealer_passes_every_check(outcome):
    # inputs in [-50, 50) are rounded to 2^-16 (error <= 2^-17 each); a product adds
    # 50 * 2^-17 per factor and the truncation 1 ulp; x * 0.75 (exact constant) is within
    # 0.75 * 2^-17 + 1 ulp; inputs and comparisons are exact
    ulp, half = 2.0 ** -16, 2.0 ** -17
    bounds = {"triple": 2 * 50 * half + half ** 2 + ulp, "matmul": 4 * (2 * 50 * half + half ** 2) + ulp,
              "bmatmul": 4 * (2 * 50 * half + half ** 2) + ulp, "conv": 4 * (2 * 50 * half + half ** 2) + ulp,
              "trunc": 0.75 * half + ulp, "bits": 0.0, "input": half, "private": half}
    for result in outcome:
        assert [h[0] for h in result["honest"]] == KINDS
        for kind, status, error_size, _ in result["honest"]:
            assert status == "ok", (kind, error_size)
            if error_size is not None:
                assert error_size <= bounds[kind], (kind, error_size)
    assert [h[2] for h in outcome[0]["honest"] if h[0] == "private"] == [None]  # revealed to the last party only
    assert outcome[PARTIES - 1]["honest"][KINDS.index("private")][2] is not None


def test_a_party_asking_for_other_tuples_than_its_peers_gets_none():
    collected, _ = spawn(steering_request, parties=PARTIES, timeout_s=120)
    for rank in range(PARTIES):
        assert collected[rank] == ("ok", "the dealer (rank 3) refused the request: the parties' requests differ "
                                         "(parties [2] disagree with party 0); refusing to deal"), collected[rank]
    status, error = collected[PARTIES]
    assert status == "error" and error.startswith("DealerError: the parties' requests differ (parties [2]")


@pytest.fixture(scope="module")
def inconsistent():
    # per kind one trial per kind of lie; then the reveal's random values, through the input program
    plan = [(kind, how) for kind in KINDS for how in SEED_LIES] + [("random", "correction")] * len(SEED_LIES)
    return plan, run_ok(lying_dealer_trials, parties=2, kinds=KINDS + ["input"], trials=len(SEED_LIES),
                        timeout_s=300, dealer_type=LyingCorrections, dealer_kwargs={"plan": plan, "seed": 11})


@pytest.mark.slow
def test_answers_inconsistent_with_the_seeds_are_caught_by_every_party(inconsistent):
    plan, outcome = inconsistent
    checks = {check for check, _ in CHECKS.values()} | {"MAC check", "verdict"}
    caught_by: dict[str, int] = {}
    for rank, result in enumerate(outcome):
        assert len(result["lied"]) == len(plan)
        for (kind, how), (_, status, check, message) in zip(plan, result["lied"]):
            assert status == "detected", (rank, kind, how, message)
            assert check in checks, (rank, kind, how, check, message)
            caught_by[check] = caught_by.get(check, 0) + (rank == 0)
    print(f"\nanswers inconsistent with the seeds detected: {len(plan)} of {len(plan)} by each of 2 parties "
          f"(at party 0, by {caught_by})")


@pytest.mark.slow
def test_the_seeded_dealer_honest_after_its_lies_comes_right(inconsistent):
    for result in inconsistent[1]:
        assert [status for _, status, _, _ in result["honest"]] == ["ok"] * (len(KINDS) + 1), result["honest"]
