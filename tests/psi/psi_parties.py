"""PSI over real zmq transports in spawned processes, recording every frame a party sends, and
the check that no id, raw or hashed, is among those frames (also used by bench/psi_bench.py)."""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "transport"))

from helpers import address, run_parties, values, zmq_options  # noqa: E402
from mpc.psi.group import hash_to_group  # noqa: E402
from mpc.psi.protocol import intersect  # noqa: E402
from parties.transport.p2p import flat_bytes  # noqa: E402
from parties.transport.zmq_transport import ZmqTransport  # noqa: E402


class RecordingZmq(ZmqTransport):
    """The zmq transport, keeping a copy of every frame (header and payload) it sends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.frames: list[bytes] = []
        super().__init__(*args, **kwargs)

    def _send_frame(self, dst: int, header: bytes, buffer: np.ndarray) -> Any:
        self.frames.append(header + bytes(flat_bytes(buffer)))
        return super()._send_frame(dst, header, buffer)


def _party(rank: int, world: int, options: Any, program: Callable, args: tuple) -> Any:
    transport = RecordingZmq(address(rank, world), options)
    try:
        return program(transport, rank, *args)
    finally:
        transport.close()


def run_psi(program: Callable, world: int, *args: Any, timeout_s: float = 900.0, peer_timeout_s: float = 600.0,
            allow_failures: bool = False) -> Any:
    """``program(transport, rank, *args)`` in each party; the results in rank order, or with
    ``allow_failures`` the raw rank -> (ok, value) map."""
    options = zmq_options(world, timeout_s=peer_timeout_s, connect_timeout_s=60.0)
    results = run_parties(_party, world, world, options, program, args, timeout_s=timeout_s)
    return results if allow_failures else values(results, world)


ID_SPACE = 2**62  # wide random ids: an 8-byte window of random bytes matches one by chance ~never


def party_ids(world: int, per_party: int, common: int, seed: int) -> list[np.ndarray]:
    """``common`` ids every party holds plus ``per_party - common`` of its own, shuffled."""
    rng = np.random.default_rng(seed)
    universe = np.unique(rng.integers(0, ID_SPACE, size=common + world * (per_party - common) + 1000))
    universe = rng.permutation(universe)[:common + world * (per_party - common)]
    shared, own = universe[:common], universe[common:].reshape(world, per_party - common)
    return [rng.permutation(np.concatenate([shared, own[rank]])) for rank in range(world)]


def intersect_and_record(transport, rank, ids_by_party, check_hashes):
    ids = ids_by_party[rank]
    found = intersect(transport, ids, f"p{rank}", "training")
    return ids[found.rows].tolist(), found.size, transport.frames, private_hashes(ids_by_party, rank, check_hashes)


def private_hashes(ids_by_party, rank, wanted):
    """The hashes of this party's ids that not every party holds (empty unless ``wanted``)."""
    if not wanted:
        return []
    ids = ids_by_party[rank]
    others = set().union(*map(set, ids_by_party)) - set.intersection(*map(set, ids_by_party))
    return _sha_and_group(np.array(sorted(others & set(ids.tolist())), dtype=np.int64))


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


def check_wire(per_party: int, common: int, timeout_s: float, seed: int = 13) -> int:
    """3 parties over recording transports: the exact intersection, one order at every party,
    and no id (raw or in decimal) nor unblinded hash of a non-shared id in any frame sent.
    Raises AssertionError otherwise; returns the bytes every party sent together."""
    ids = party_ids(3, per_party, common, seed)
    expected = sorted(set.intersection(*(set(i.tolist()) for i in ids)))
    results = run_psi(intersect_and_record, 3, ids, True, timeout_s=timeout_s)
    for aligned, size, _, _ in results:
        assert size == len(expected) == common
        assert sorted(aligned) == expected
    assert results[0][0] == results[1][0] == results[2][0]  # row k of each party is the same customer
    everyone = np.unique(np.concatenate(ids))
    hashes = [value for result in results for value in result[3]]
    assert len(hashes) == 2 * 3 * (per_party - common)
    for _, _, frames, _ in results:
        assert sum(map(len, frames)) > 2 * per_party * 32  # the ring really went through the recorder
        assert_absent(frames, everyone, hashes)
    return sum(len(frame) for result in results for frame in result[2])
