"""The network floor's round trip: the loopback's own cost, not a loaded scheduler's."""

from bench.netfloor import low_percentile


def test_the_round_trip_is_unmoved_by_pings_that_waited_for_the_scheduler():
    # a quiet stretch of pings at 21 us and a loaded one, most of the run, at 87 us: the
    # median is the loaded figure, the 10th percentile the loopback's
    quiet, loaded = [21e-6 + i * 1e-9 for i in range(400)], [87e-6] * 1600
    times = loaded[:800] + quiet + loaded[800:]
    assert low_percentile(times) == quiet[199] and low_percentile(loaded + quiet, 50) == 87e-6
    assert low_percentile([5.0]) == 5.0 and low_percentile([3.0, 1.0, 2.0], 100) == 3.0
