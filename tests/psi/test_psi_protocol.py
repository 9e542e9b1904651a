"""Private set intersection over real party processes: exact results, what the wire carries,
clear errors, and parties that lie."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from mpc.psi.group import BlindingKey, hash_to_group
from mpc.psi.protocol import intersect
from psi_parties import run_psi

ID_SPACE = 2**62  # wide random ids: an 8-byte window of random bytes matches one by chance ~never


def party_ids(world: int, per_party: int, common: int, seed: int) -> list[np.ndarray]:
    """``common`` ids every party holds plus ``per_party - common`` of its own, shuffled."""
    rng = np.random.default_rng(seed)
    universe = np.unique(rng.integers(0, ID_SPACE, size=common + world * (per_party - common) + 1000))
    universe = rng.permutation(universe)[:common + world * (per_party - common)]
    shared, own = universe[:common], universe[common:].reshape(world, per_party - common)
    return [rng.permutation(np.concatenate([shared, own[rank]])) for rank in range(world)]


def _intersect_and_record(transport, rank, ids_by_party, check_hashes):
    ids = ids_by_party[rank]
    found = intersect(transport, ids, f"p{rank}", "training")
    others = set().union(*map(set, ids_by_party)) - set.intersection(*map(set, ids_by_party))
    own_private = np.array(sorted(others & set(ids.tolist())), dtype=np.int64)
    hashes = _sha_and_group(own_private) if check_hashes else []
    return ids[found.rows].tolist(), found.size, transport.frames, hashes


def _sha_and_group(ids: np.ndarray) -> list[bytes]:
    """What an unblinded id could look like on the wire: its group element and its SHA-256."""
    encoded = ids.astype("<i8").tobytes()
    digests = [hashlib.sha256(b"cotrain/psi/v1/id" + encoded[i:i + 8]).digest() for i in range(0, len(encoded), 8)]
    return hash_to_group(ids) + digests


def _windows(blob: bytes, order: str) -> np.ndarray:
    """Every 8-byte window of ``blob`` (all offsets) as integers of the given byte order."""
    return np.concatenate([np.frombuffer(blob, dtype=f"{order}u8", count=(len(blob) - offset) // 8, offset=offset)
                           for offset in range(8)])


def assert_absent(frames: list[bytes], ids: np.ndarray, values32: list[bytes]) -> None:
    """No id (as 8 bytes either way round, or in decimal) and no 32-byte value in any frame."""
    blob = b"|".join(frames)
    for order in "<>":
        hits = np.isin(_windows(blob, order), ids.astype(np.uint64))
        assert not hits.any(), f"a raw id ({order}) is on the wire"
    decimals = {int(run) for run in re.findall(rb"\d{12,}", blob)}
    assert not decimals & set(ids.tolist()), "an id in decimal is on the wire"
    if values32:
        prefixes = np.frombuffer(b"".join(v[:8] for v in values32), dtype="<u8")
        windows = _windows(blob, "<")
        suspects = np.flatnonzero(np.isin(windows, prefixes))
        full = set(values32)
        per_offset = [(len(blob) - offset) // 8 for offset in range(8)]
        starts = np.cumsum([0, *per_offset])
        for index in suspects:
            offset = int(np.searchsorted(starts, index, side="right") - 1)
            at = offset + 8 * int(index - starts[offset])
            assert blob[at:at + 32] not in full, "an unblinded hash of an id is on the wire"


def check_three_parties(per_party: int, common: int, timeout_s: float) -> None:
    """Exact intersection, one order everywhere, and no id or unblinded hash on the wire."""
    ids = party_ids(3, per_party, common, seed=13)
    expected = sorted(set.intersection(*(set(i.tolist()) for i in ids)))
    results = run_psi(_intersect_and_record, 3, ids, True, timeout_s=timeout_s)
    for aligned, size, _, _ in results:
        assert size == len(expected) == common
        assert sorted(aligned) == expected
    # one order for every party: row k of each party is the same customer
    assert results[0][0] == results[1][0] == results[2][0]
    everyone = np.unique(np.concatenate(ids))
    private_hashes = [value for result in results for value in result[3]]
    assert len(private_hashes) == 2 * 3 * (per_party - common)
    for _, _, frames, _ in results:
        assert sum(map(len, frames)) > 2 * per_party * 32  # the ring really went through the recorder
        assert_absent(frames, everyone, private_hashes)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~60 s on 2 idle cores; the margin is for a busy machine
def test_three_parties_100k_ids_exact_and_nothing_private_on_the_wire():
    check_three_parties(100_000, 60_000, timeout_s=1500)


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
    results = run_psi(_intersect_and_record, world, ids, False)
    assert all(size == 150 and sorted(aligned) == expected for aligned, size, _, _ in results)
    assert all(result[0] == results[0][0] for result in results)


def test_group_is_commutative_and_keys_differ():
    points = hash_to_group(np.arange(50, dtype=np.int64))
    assert len(set(points)) == 50 and hash_to_group(np.arange(50)) == points
    first, second = BlindingKey(), BlindingKey()
    assert first.blind(second.blind(points)) == second.blind(first.blind(points))
    assert first.blind(points) != second.blind(points)


def _intersect_or_fail(transport, rank, ids_by_party):
    try:
        intersect(transport, ids_by_party[rank], f"p{rank}", "training", min_size=1)
    except Exception as error:  # every party should stop with the same clear message
        return f"{type(error).__name__}: {error}"
    return "finished"


@pytest.mark.parametrize("case", ["duplicate", "disjoint"])
def test_every_party_stops_with_a_message_naming_the_cause(case):
    ids = party_ids(3, 200, 50, seed=5)
    if case == "duplicate":
        ids[1] = np.concatenate([ids[1], ids[1][:3]])
        expected = "p1: 3 ids occur more than once in its training table's id column"
    else:
        ids = [ids[0], ids[1], np.setdiff1d(ids[2], ids[0])]
        expected = ("private set intersection (training tables): 0 ids are held by every party "
                    "(ids per party: party 0 (p0) 200, party 1 (p1) 200, party 2 (p2) 150)")
    messages = run_psi(_intersect_or_fail, 3, ids)
    assert all(message.split(": ", 1)[1].startswith(expected) for message in messages), messages


def _lie(transport, rank, ids_by_party, liar, what):
    """``liar`` alters its first message of kind ``what``; the result is each party's outcome."""
    send_obj, lied = transport.send_obj, []

    def altered_send_obj(obj, dst, group=None):
        if rank == liar and not lied:
            if what == "list" and isinstance(obj, bytes):
                obj, lied[:] = bytes(32) + obj[32:], [True]  # u = 0: a point of small order
            if what == "positions" and isinstance(obj, dict) and dst == 1:
                rows = np.frombuffer(obj["rows"], dtype=np.int64).copy()
                rows[0] = 10**6
                obj, lied[:] = {**obj, "rows": rows.tobytes()}, [True]
        return send_obj(obj, dst, group)

    transport.send_obj = altered_send_obj
    return _intersect_or_fail(transport, rank, ids_by_party)


@pytest.mark.parametrize("liar, what, victim, expected", [
    (1, "list", 2, "PsiError: private set intersection (training tables): party 1 (p1) sent a malformed list: "
                   "not a group element of prime order"),
    (0, "positions", 1, "PsiError: private set intersection (training tables): party 0 (p0) sent a position "
                        "outside 0..199"),
])
def test_a_party_that_lies_is_named(liar, what, victim, expected):
    ids = party_ids(3, 200, 50, seed=8)
    results = run_psi(_lie, 3, ids, liar, what, peer_timeout_s=30, allow_failures=True)
    ok, message = results[victim]
    assert ok and message.startswith(expected), message
