"""Private set intersection over real party processes: exact results, what the wire carries,
clear errors, and parties that lie."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mpc.data.config import DataConfig
from mpc.psi import PsiConfig, align_by_psi
from mpc.psi.group import BlindingKey, hash_to_group
from psi_parties import assert_absent, check_wire, intersect_and_record, party_ids, private_hashes, run_psi

def _align_in_both_modes(transport, rank, ids_by_party):
    """align_by_psi with psi.reveal=ids, then size, over one transport: each party's aligned
    rows (id and row number) per mode, and every frame it sent."""
    ids = ids_by_party[rank]
    frame = pd.DataFrame({"id": ids, "row": np.arange(len(ids))})
    aligned = {}
    for reveal in ("ids", "size"):
        table, _ = align_by_psi(transport, frame, [], DataConfig(), PsiConfig(enabled=True, reveal=reveal),
                                f"p{rank}", "training")
        assert ("id" in table.columns) == (reveal == "ids")  # size: the aligned table lists no ids
        aligned[reveal] = (ids[table["row"].to_numpy()].tolist(), table["row"].tolist())
    return aligned, transport.frames, private_hashes(ids_by_party, rank, True)


@pytest.mark.slow
def test_three_parties_5k_ids_both_modes_align_and_nothing_private_on_the_wire():
    # 3 x 5,000 ids, 60 % common, in both reveal modes (one mode at 3 x 100,000: the next test)
    ids = party_ids(3, 5_000, 3_000, seed=13)
    expected = sorted(set.intersection(*(set(i.tolist()) for i in ids)))
    results = run_psi(_align_in_both_modes, 3, ids, timeout_s=600)
    for rank, (aligned, _, _) in enumerate(results):
        for reveal, (aligned_ids, rows) in aligned.items():
            assert sorted(aligned_ids) == expected, reveal
            assert len(set(rows)) == len(rows) <= len(ids[rank])  # its own rows, each once
    for reveal in ("ids", "size"):
        # one order for every party: row k of each party is the same customer
        assert results[0][0][reveal][0] == results[1][0][reveal][0] == results[2][0][reveal][0]
    assert results[0][0]["ids"][0] == expected
    # size: the order of the blinded values, which no id decides (3,000 ids sorted by chance: never)
    assert results[0][0]["size"][0] != expected
    everyone = np.unique(np.concatenate(ids))
    hashes = [value for result in results for value in result[2]]
    assert len(hashes) == 2 * 3 * 2_000
    for _, frames, _ in results:
        assert sum(map(len, frames)) > 2 * 2 * 5_000 * 32  # both rings really went through the recorder
        assert_absent(frames, everyone, hashes)


@pytest.mark.slow
def test_three_parties_100k_ids_exact_and_nothing_private_on_the_wire():
    """The issue's size: 3 x 100,000 ids, 60 % common (about a minute on 2 idle cores)."""
    assert check_wire(100_000, 60_000, timeout_s=1200) > 3 * 2 * 100_000 * 32


def test_wire_check_finds_a_planted_id_or_hash():
    ids = np.array([2**61 + 12345, 2**60 + 7], dtype=np.int64)
    hashes = hash_to_group(ids)
    noise = bytes(range(256)) * 8
    for planted in (ids[0].astype("<i8").tobytes(), ids[1].astype(">i8").tobytes(), str(ids[0]).encode(), hashes[1]):
        frame = noise[:101] + planted + noise[101:]  # at an offset that is no multiple of 8
        with pytest.raises(AssertionError, match="on the wire"):
            assert_absent([noise, frame], ids, hashes)
    assert_absent([noise], ids, hashes)


@pytest.mark.parametrize("world", [2, 5])
def test_two_and_five_parties(world):
    ids = party_ids(world, 400, 150, seed=world)
    expected = sorted(set.intersection(*(set(i.tolist()) for i in ids)))
    results = run_psi(intersect_and_record, world, ids, False)
    assert all(size == 150 and sorted(aligned) == expected for aligned, size, _, _ in results)
    assert all(result[0] == results[0][0] for result in results)


def test_group_is_commutative_and_keys_differ():
    points = hash_to_group(np.arange(50, dtype=np.int64))
    assert len(set(points)) == 50 and hash_to_group(np.arange(50)) == points
    first, second = BlindingKey(), BlindingKey()
    assert first.blind(second.blind(points)) == second.blind(first.blind(points))
    assert first.blind(points) != second.blind(points)


def _align_or_fail(transport, rank, tables):
    """Each party's outcome of aligning its own table: its error, or 'finished'."""
    try:
        align_by_psi(transport, tables[rank], [], DataConfig(), PsiConfig(enabled=True), f"p{rank}", "training")
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return "finished"


def _tables(ids_by_party):
    return [pd.DataFrame({"id": ids, "x": np.arange(len(ids)) + 0.25}) for ids in ids_by_party]


@pytest.mark.parametrize("case", ["duplicate", "non-integer", "disjoint"])
def test_every_party_stops_at_once_with_a_message_naming_the_party_and_cause(case):
    ids = party_ids(3, 200, 50, seed=5)
    tables = _tables(ids)
    if case == "duplicate":
        tables[1] = _tables([np.concatenate([ids[1], ids[1][:3]])])[0]
        expected = "PsiError: p1: 3 ids occur more than once in its training table's id column"
    elif case == "non-integer":
        tables[1]["id"] = tables[1]["id"].astype(np.float64)
        tables[1].loc[6, "id"] = 1234.5
        expected = "PsiError: p1: id column 'id' of its training table holds a non-integer id at data row 7"
    else:
        tables[2] = _tables([np.setdiff1d(ids[2], ids[0])])[0]
        expected = ("PsiError: private set intersection (training tables): 0 ids are held by every party "
                    "(ids per party: party 0 (p0) 200, party 1 (p1) 200, party 2 (p2) 150)")
    # a party still waiting for a peer after 60 s would end with a timeout instead
    messages = run_psi(_align_or_fail, 3, tables, peer_timeout_s=60)
    assert all(message.startswith(expected) for message in messages), messages
    assert not any("1234" in message for message in messages)  # no id value travels


def _lie(transport, rank, tables, liar, what, target):
    """``liar`` alters its first message of kind ``what`` (to ``target``, for positions); the
    result is each party's outcome."""
    send_obj, lied = transport.send_obj, []

    def altered_send_obj(obj, dst, group=None):
        if rank == liar and not lied:
            if what == "list" and isinstance(obj, bytes):
                obj, lied[:] = bytes(32) + obj[32:], [True]  # u = 0: a point of small order
            if what == "positions" and isinstance(obj, dict) and "rows" in obj and dst == target:
                rows = np.frombuffer(obj["rows"], dtype=np.int64).copy()
                rows[0] = 10**6
                obj, lied[:] = {**obj, "rows": rows.tobytes()}, [True]
        return send_obj(obj, dst, group)

    transport.send_obj = altered_send_obj
    return _align_or_fail(transport, rank, tables)


@pytest.mark.parametrize("liar, what, target, expected", [
    # mid-ring: party 2 finds party 1's list malformed
    (1, "list", None, "PsiError: p2: private set intersection (training tables): party 1 (p1) sent a malformed "
                      "list: not a group element of prime order"),
    # the comparer's positions to party 1
    (0, "positions", 1, "PsiError: p1: private set intersection (training tables): party 0 (p0) sent a position "
                        "outside 0..199"),
    # the last hop's positions of the comparer's own rows
    (2, "positions", 0, "PsiError: p0: private set intersection (training tables): party 2 (p2) sent a position "
                        "outside 0..199"),
])
def test_a_party_that_lies_is_named_to_every_party_at_once(liar, what, target, expected):
    tables = _tables(party_ids(3, 200, 50, seed=8))
    # every party, not only the one that caught the lie, stops with its message well before
    # the transport's 60 s timeout
    messages = run_psi(_lie, 3, tables, liar, what, target, peer_timeout_s=60)
    assert all(message.startswith(expected) for message in messages), messages
