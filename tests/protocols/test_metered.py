"""``protocols.parts.metered``: traffic inside a block is charged to its part under its phase,
nested blocks' traffic to the inner part only, and an exception still closes the block."""

from __future__ import annotations

import pytest

from parties.transport.stats import CommStats
from protocols.parts import PartCounters, metered


def _counters(wire: CommStats) -> PartCounters:
    counters = PartCounters()
    counters.wire = wire
    return counters


def test_nested_meters_charge_each_byte_and_round_once():
    wire = CommStats()
    outer, inner = _counters(wire), _counters(wire)
    with metered(outer, "online"):
        wire.add(sent=10, received=5, rounds=1)
        with metered(inner, "offline"):
            wire.add(sent=100, received=1, rounds=2)
        wire.add(sent=3, rounds=1)
    assert (outer.online_bytes, outer.online_rounds, outer.offline_bytes) == (18, 2, 0)
    assert (inner.offline_bytes, inner.offline_rounds, inner.online_bytes) == (101, 2, 0)


def test_a_block_left_by_an_exception_is_charged_and_closed():
    wire = CommStats()
    counters = _counters(wire)
    with pytest.raises(RuntimeError):
        with metered(counters, "online"):
            wire.add(sent=7, rounds=1)
            raise RuntimeError("peer gone")
    with metered(counters, "online"):  # a later block starts from an empty nesting
        wire.add(sent=1, rounds=1)
    assert (counters.online_bytes, counters.online_rounds) == (8, 2)


def test_a_part_without_a_transport_is_charged_nothing():
    counters = PartCounters()
    with metered(counters, "offline"):
        pass
    assert counters.as_dict() == PartCounters().as_dict()
    with pytest.raises(ValueError):
        with metered(counters, "later"):
            pass
