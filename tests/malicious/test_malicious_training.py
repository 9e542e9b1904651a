"""SecureTrainer under protocol=malicious: a party that deviates once anywhere in training
(an opening, a truncation, a comparison, a tuple it received) stops every party before
anything is revealed. (Honest runs against plaintext: test_malicious_job.py.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from adversary import Adversary  # noqa: E402
from harness import spawn  # noqa: E402
from train_programs import train_party  # noqa: E402


@pytest.mark.slow
# 3 steps of 20 rows: each step has 2 matmul openings, dozens of products and truncations,
# and (MLP) 2 comparisons, so every event below happens in the second or third step
@pytest.mark.parametrize("target,at,cheater,hidden", [("matmul", 3, 1, ()), ("tuple:trunc", 10, 0, ()),
                                                      ("mul", 25, 2, ()), ("compare", 3, 1, (3,))])
def test_cheat_during_training_stops_every_party(target, at, cheater, hidden):
    parties = 3
    adversary = Adversary(target, at=at, seed=at)
    collected, codes = spawn(train_party, parties=parties, rows=20, width=3, epochs=1, batch=20, hidden=hidden,
                             adversary=adversary, cheater=cheater, timeout_s=300)
    for rank in range(parties):
        status, value = collected[rank]
        assert status == "error", f"party {rank} finished: {value}"
        assert "CheatDetected" in value and "malicious-security check" in value, value
        assert "no value depending on it was revealed" in value
        assert codes[rank] != 0
    assert collected[parties][0] == "ok"  # the dealer was told to stop
