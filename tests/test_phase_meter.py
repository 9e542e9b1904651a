"""Where a step's traffic goes: the phase meter over a party's counters, and its per-row sums."""

from __future__ import annotations

from mpc.training import EpochRecord, PhaseMeter
from parties.summary import phase_bytes_per_row
from parties.transport.stats import CommStats


def test_each_phase_is_charged_what_was_counted_inside_it_and_take_starts_afresh():
    stats = CommStats()
    meter = PhaseMeter(stats)
    with meter.phase("forward"):
        stats.add(sent=100, received=50)
    stats.add(sent=7)  # outside any phase: charged to none
    for _ in range(2):
        with meter.phase("backward"):
            stats.add(sent=10, received=10, rounds=2)
    assert meter.take() == {"forward": {"bytes": 150, "rounds": 1}, "backward": {"bytes": 40, "rounds": 4}}
    assert meter.take() == {}


def test_bytes_per_row_average_the_epochs_over_the_training_rows():
    records = [EpochRecord(epoch, 1.0, 0, 0, 0, phases={"forward": {"bytes": 1000 * epoch, "rounds": 1}})
               for epoch in (1, 2)]
    assert phase_bytes_per_row(records, rows=10) == {"forward": 150.0}  # (1000 + 2000) / 2 epochs / 10 rows
