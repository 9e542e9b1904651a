"""A request for tuples comes as dealer answers of bounded size, each checked before use.

``answers.cut`` in process; then one set of processes (2 parties and a ``LyingDealer``)
computing ``x * y`` with answers of at most 600 dealt elements: the product's 12 truncation
pairs (193 dealt elements each) span several answers, and a lie about one of their bits in a
later answer is caught by every party before anything is revealed; an honest planned block
comes right in several answers, checked before the reveal; every byte the parties' transport counted is
charged to one of the engine's phases.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from protocols.malicious.answers import cut, dealt_elements

sys.path.insert(0, str(Path(__file__).parent))

from harness import run_ok  # noqa: E402
from lying_dealer import LyingDealer  # noqa: E402
from programs import cut_answers  # noqa: E402

LIMIT = 600
STEP = [["matmul", 8, 4, 3], ["trunc", [8, 3]], ["bits", [8, 3], 32], ["triple", [40]], ["input", [5, 4], 1],
        ["random", [2000]], ["private", [300], 0], ["conv", [1, 1, 20, 20], [1, 1, 3, 3], [1, 1], [0, 0], [1, 1], 1]]


def _joined(answers: list) -> list:
    """The program's specs again, from the answers' pieces (each cut spec's pieces adding up)."""
    specs, counted = [], 0
    for answer in answers:
        for piece in answer:
            if piece.whole:
                specs.append(piece.spec)
                continue
            assert piece.wire[0] == piece.spec[0] and piece.wire[2:] == piece.spec[2:], piece
            counted += piece.wire[1][0]
            if piece.last:
                assert counted == int(np.prod(piece.spec[1])), piece
                specs.append(piece.spec)
                counted = 0
    return specs


@pytest.mark.parametrize("limit", [1, 200, LIMIT, 5000, 1 << 21])
def test_cut_keeps_every_answer_within_the_limit_and_the_order(limit):
    answers = cut(STEP, limit, checked=True)
    assert _joined(answers) == STEP
    for answer in answers:
        size = sum(dealt_elements(piece.wire, True) for piece in answer)
        alone = len(answer) == 1 and (answer[0].wire[0] in ("matmul", "conv") or answer[0].wire[1] == [1])
        assert size <= limit or alone, (limit, size, answer)  # over it: a bilinear tuple, or one element
    whole = [piece.spec for answer in answers for piece in answer if piece.whole]
    assert all(dealt_elements(spec, True) <= limit or spec[0] in ("matmul", "conv") for spec in whole)
    if limit >= sum(dealt_elements(spec, True) for spec in STEP):
        assert len(answers) == 1 and all(piece.whole for piece in answers[0])


def test_cut_refuses_an_empty_limit():
    with pytest.raises(ValueError, match="at least one element"):
        cut(STEP, 0, checked=True)


@pytest.fixture(scope="module")
def outcome():
    # the 4th truncation piece dealt is wrong: it comes in the 4th answer of the product's
    # (a triple and 2 pairs, then 3 pairs per answer), after both input masks' answers
    return run_ok(cut_answers, parties=2, limit=LIMIT, timeout_s=180, dealer_type=LyingDealer,
                  dealer_kwargs={"plan": [("trunc", 1)], "skip": 3, "seed": 3})


def test_a_lie_in_a_later_answer_is_caught_by_every_party(outcome):
    for result in outcome:
        status, check, message = result["lied"]
        assert status == "detected" and check == "bit sacrifice" and "truncation pair" in message, result["lied"]


def test_a_planned_block_in_several_answers_each_checked_comes_right(outcome):
    half, ulp = 2.0 ** -17, 2.0 ** -16
    bound = 2 * 50 * half + half ** 2 + ulp  # inputs in [-50, 50) rounded, one truncation
    for result in outcome:
        recorded, planned = result["runs"]
        assert recorded["error"] <= bound and planned["error"] <= bound, result["runs"]
        assert planned["answers"] >= 5 and planned["checks"] >= 1, planned


def test_the_engine_charges_all_its_traffic_to_a_phase(outcome):
    for result in outcome:
        traffic = result["traffic"]
        assert all(counts["bytes"] > 0 and counts["rounds"] > 0 for counts in traffic.values()), traffic
        assert sum(counts["bytes"] for counts in traffic.values()) == result["transport_bytes"], traffic
        assert sum(traffic[phase]["rounds"] for phase in ("online", "tuple check", "MAC check")) == result["rounds"]
        # the greeting, each answer received and at most one asked for ahead
        assert result["dealer_answers"] + 1 <= traffic["dealer"]["rounds"] <= result["dealer_answers"] + 2, traffic
