"""Private set intersection of n parties' ids by commutative blinding (semi-honest).

1. Each party puts its ids in a private random order (CSPRNG), hashes them to the group,
   blinds them with its own key and passes the list to the next party of the ring, which
   blinds what it receives and passes it on, keeping the order. After n hops a list carries
   every party's key. Only the owner knows which id sits at which position.
2. The last hop sends the finished list to the comparer (rank 0). The comparer's own list
   is shuffled once more by its last hop on the way, so the comparer never learns which
   finished value is which of its own ids.
3. The comparer finds the values present in every list and tells each party the positions of
   its rows in the intersection (its own go through its last hop, which undoes the shuffle).

Every message carries blinded values or positions in a private order; no party's id leaves
it unblinded, and no key leaves its party. Every party learns the set sizes, the
intersection's size and which of its own rows are in it (the positions it receives), and
nothing about another party's ids beyond those; the comparer also sees how large the
intersection of each subset of parties is (which finished values occur in which lists),
never which ids those are. The positions come in the order of the finished values, which
no party can compute alone.

Each step that checks what a peer sent (every hop, the positions) ends with one status
round, so a failure at one party stops every party at once with its message.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import numpy as np

from mpc.data.exchange import exchange
from mpc.data.tables import DataError
from mpc.psi.group import BlindingKey, GroupError, hash_to_group, pack, unpack

log = logging.getLogger("cotrain.psi")

COMPARER = 0
T = TypeVar("T")


class PsiError(DataError):
    """The private set intersection cannot go on; the message names the party at fault."""


@dataclass(frozen=True)
class Intersection:
    rows: np.ndarray  # this party's row indices of the common ids (in the comparer's order)
    size: int
    set_sizes: tuple[int, ...]  # every party's number of ids, in rank order


def private_permutation(count: int) -> np.ndarray:
    """A uniformly random order of ``count`` items from the OS CSPRNG (64-bit sort keys)."""
    keys = np.frombuffer(secrets.token_bytes(8 * count), dtype=np.uint64)
    return np.argsort(keys, kind="stable")


def duplicate_problem(ids: np.ndarray, party: str, what: str) -> str:
    """An error line naming the party if any id occurs twice in its table, else ''."""
    unique, counts = np.unique(ids, return_counts=True)
    repeated = unique[counts > 1]
    if len(repeated) == 0:
        return ""
    return (f"{party}: {len(repeated)} ids occur more than once in its {what} table's id column; "
            "private set intersection needs each customer once")


def intersect(comm: Any, ids: np.ndarray, party: str, what: str, min_size: int = 1,
              problem: str = "") -> Intersection:
    """The rows of ``ids`` that every party holds, in the order of their finished (fully
    blinded) values. A non-empty ``problem`` (this party's table cannot take part) stops every
    party with that message before anything is blinded; a check that fails later (a malformed
    list, impossible positions) stops every party at the end of that step, naming the party
    that found it and the party at fault."""
    rank, world = comm.get_rank(), comm.get_world_size()
    problem = problem or duplicate_problem(ids, party, what)
    sizes = tuple(m["size"] for m in _stop_together(comm, PsiError(problem) if problem else None, {"size": len(ids)}))
    key = BlindingKey()
    order = private_permutation(len(ids))
    elements = key.blind(hash_to_group(ids[order]))
    predecessor = (rank - 1) % world
    for hop in range(1, world):
        owner = (rank - hop) % world
        received = _pass_along(comm, pack(elements), rank, world)
        elements = _together(comm, lambda: _blind_from(key, received, sizes[owner], comm.peer(predecessor),
                                                       party, what))
    last_hop = (COMPARER - 1) % world  # the last hop of the comparer's own list (rank n-1)
    reshuffle = None
    if rank == last_hop:
        reshuffle = private_permutation(len(elements))
        elements = [elements[i] for i in reshuffle]
    if rank == COMPARER:
        size, positions = _compare(comm, elements, sizes, party, what, min_size)
        for dst in range(world):
            if dst != COMPARER:
                extra = {"comparer": positions[COMPARER].tobytes()} if dst == last_hop else {}
                comm.send_obj({"rows": positions[dst].tobytes(), **extra}, dst)
        _together(comm, lambda: None)
        back = comm.recv_obj(last_hop)
        mine = _together(comm, lambda: _positions(back, size, sizes[COMPARER], comm.peer(last_hop), party, what))
        return Intersection(rows=order[mine], size=size, set_sizes=sizes)
    comm.send_obj(pack(elements), COMPARER)
    size = _outcome(comm)
    message = comm.recv_obj(COMPARER)

    def received_positions() -> tuple[np.ndarray, np.ndarray | None]:
        mine = _positions(message, size, sizes[rank], comm.peer(COMPARER), party, what)
        if reshuffle is None:
            return mine, None
        theirs = {"rows": message.get("comparer")} if isinstance(message, dict) else None
        return mine, _positions(theirs, size, len(reshuffle), comm.peer(COMPARER), party, what)

    mine, theirs = _together(comm, received_positions)
    if reshuffle is not None:  # the comparer's positions, with this party's shuffle undone
        comm.send_obj({"rows": reshuffle[theirs].astype(np.int64).tobytes()}, COMPARER)
    _together(comm, lambda: None)
    return Intersection(rows=order[mine], size=size, set_sizes=sizes)


def _stop_together(comm: Any, failure: PsiError | None, payload: dict | None = None) -> list[dict]:
    """Every party's payload; if any party failed, every party raises its error (the public
    part: the party and the cause, never an id or a path) at once, not at its timeout."""
    try:
        return exchange(comm, payload or {}, failure)
    except PsiError:
        raise
    except DataError as error:
        raise PsiError(str(error)) from None


def _together(comm: Any, step: Callable[[], T]) -> T:
    """This party's ``step``, then one status round: no party goes on after any has failed."""
    try:
        result, failure = step(), None
    except PsiError as error:
        result, failure = None, error
    _stop_together(comm, failure)
    return result


def _pass_along(comm: Any, blob: bytes, rank: int, world: int) -> bytes:
    """Send to the next party of the ring, receive from the previous one. Even ranks send
    first and odd ranks receive first, so blocking sends cannot wait on each other in a
    circle (for an odd ring, the two even neighbours at the wrap are ordered by the rest)."""
    successor, predecessor = (rank + 1) % world, (rank - 1) % world
    if rank % 2 == 0:
        comm.send_obj(blob, successor)
        return comm.recv_obj(predecessor)
    received = comm.recv_obj(predecessor)
    comm.send_obj(blob, successor)
    return received


def _blind_from(key: BlindingKey, blob: Any, count: int, sender: str, party: str, what: str) -> list[bytes]:
    try:
        return key.blind(unpack(blob, count))
    except GroupError as error:
        raise PsiError(f"{party}: private set intersection ({what} tables): {sender} sent a malformed list: "
                       f"{error}") from None


def _compare(comm: Any, own_list: list[bytes], sizes: tuple[int, ...], party: str, what: str,
             min_size: int) -> tuple[int, dict[int, np.ndarray]]:
    """At the comparer: every party's finished list in, the common values' positions out."""
    world = comm.get_world_size()
    blobs = {(src + 1) % world: comm.recv_obj(src) for src in range(world) if src != COMPARER}
    lists, problem = {(COMPARER + 1) % world: own_list}, ""
    for owner, blob in blobs.items():
        try:
            lists[owner] = unpack(blob, sizes[owner])
        except GroupError as error:
            sender = comm.peer((owner - 1) % world)
            problem = problem or (f"{party}: private set intersection ({what} tables): {sender} sent a malformed "
                                  f"list: {error}")
    if not problem:
        common = set(lists[0]).intersection(*(lists[owner] for owner in range(1, world)))
        if len(common) < min_size:
            held = ", ".join(f"{comm.peer(r)} {sizes[r]}" for r in range(world))
            problem = (f"private set intersection ({what} tables): {len(common)} ids are held by every party "
                       f"(ids per party: {held}); psi.min_intersection={min_size}")
    comm.broadcast_obj({"error": problem} if problem else {"size": len(common)}, COMPARER)
    if problem:
        raise PsiError(problem)
    agreed = sorted(common)
    positions = {}
    for owner, values in lists.items():
        where = {value: index for index, value in enumerate(values)}
        positions[owner] = np.fromiter((where[value] for value in agreed), dtype=np.int64, count=len(agreed))
    return len(agreed), positions


def _outcome(comm: Any) -> int:
    message = comm.broadcast_obj(None, COMPARER)
    if message.get("error"):
        raise PsiError(str(message["error"]))
    return int(message["size"])


def _positions(message: Any, size: int, bound: int, peer: str, party: str, what: str) -> np.ndarray:
    """Positions sent by ``peer``: ``size`` distinct indices into a list of ``bound``."""
    blob = message.get("rows") if isinstance(message, dict) else None
    problem = ""
    if not isinstance(blob, bytes) or len(blob) != 8 * size:
        problem = f"expected {size} positions"
    else:
        positions = np.frombuffer(blob, dtype=np.int64)
        if size and (positions.min() < 0 or positions.max() >= bound):
            problem = f"a position outside 0..{bound - 1}"
        elif len(np.unique(positions)) != size:
            problem = "a position twice"
    if problem:
        raise PsiError(f"{party}: private set intersection ({what} tables): {peer} sent {problem}")
    return positions
