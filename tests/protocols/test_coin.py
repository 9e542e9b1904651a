"""Public randomness is commit-then-reveal: the last party to speak cannot choose it.

Three real party processes (gloo, inside a session, whose global seed is itself tossed
this way), five tosses: two honest ones (every party
gets the same 32 bytes, fresh each time); one where party 2 commits, then reads every
other party's opening before sending its own and opens a different contribution chosen to
bias the value; one where party 2 sends different commitments to different peers; and a
last honest one. Every honest party must refuse both cheats, naming party 2.
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np
import pytest
import torch

from sessions import run_parties
from protocols.coin import CoinTossError, commitment, exchange, joint_random, joint_value

PARTIES = 3
LABEL = b"test coin"


def _send_all(comm: Any, data: bytes) -> None:
    tensor = torch.frombuffer(bytearray(data), dtype=torch.int64)
    for request in [comm.isend(tensor, dst) for dst in range(PARTIES) if dst != comm.get_rank()]:
        request.wait()


def _receive_all(comm: Any, size: int) -> dict[int, bytes]:
    buffers = {src: torch.empty(size // 8, dtype=torch.int64) for src in range(PARTIES) if src != comm.get_rank()}
    for request in [comm.irecv(buffer, src) for src, buffer in buffers.items()]:
        request.wait()
    return {src: buffer.numpy().view(np.uint8).tobytes() for src, buffer in buffers.items()}


def last_speaker(comm: Any) -> bytes:
    """Commits honestly, waits for every other opening, then opens another contribution:
    the one that makes the joint value start with a zero byte."""
    rank = comm.get_rank()
    contribution, nonce = secrets.token_bytes(32), secrets.token_bytes(16)
    exchange(comm, commitment(LABEL, rank, contribution, nonce))
    others = _receive_all(comm, 48)
    while True:
        chosen = secrets.token_bytes(32)
        contributions = [others[src][:32] if src != rank else chosen for src in range(PARTIES)]
        if joint_value(LABEL, contributions)[0] == 0:
            break
    _send_all(comm, chosen + nonce)  # the others stop here: no comparison round
    return chosen


def equivocator(comm: Any) -> bytes:
    """Sends party 0 a commitment to one contribution and party 1 a commitment to another,
    opens to each the one it committed to towards it, and reports truthfully what it got."""
    rank = comm.get_rank()
    pieces = {dst: (secrets.token_bytes(32), secrets.token_bytes(16)) for dst in (0, 1)}
    received = {}
    for step, message in enumerate((lambda dst: commitment(LABEL, rank, *pieces[dst]),
                                    lambda dst: b"".join(pieces[dst]))):
        requests = [comm.isend(torch.frombuffer(bytearray(message(dst)), dtype=torch.int64), dst) for dst in (0, 1)]
        got = _receive_all(comm, len(message(0)))
        if step == 0:
            received = got
        for request in requests:
            request.wait()
    exchange(comm, received[0] + received[1] + commitment(LABEL, rank, *pieces[0]))
    return b""


SCRIPT = (None, None, "last_speaker", "equivocator", None)


def _tosses(crypten: Any, rank: int) -> list[tuple[str, Any]]:
    """The script's five tosses over the session's transport, party 2 cheating in two."""
    comm = crypten.communicator.get()
    outcomes = []
    for cheat in SCRIPT:
        if cheat and rank == PARTIES - 1:
            outcomes.append(("cheated", {"last_speaker": last_speaker, "equivocator": equivocator}[cheat](comm)))
            continue
        try:
            outcomes.append(("ok", joint_random(comm, LABEL)))
        except CoinTossError as error:
            outcomes.append(("refused", str(error)))
    return outcomes


@pytest.fixture(scope="module")
def tosses() -> list[list[tuple[str, Any]]]:
    return run_parties(_tosses, world=PARTIES)


def test_honest_parties_agree_on_fresh_values(tosses):
    for index in (0, 1, 4):
        values = [party[index] for party in tosses]
        assert all(status == "ok" for status, _ in values), values
        assert len({value for _, value in values}) == 1 and len(values[0][1]) == 32
    assert len({tosses[0][index][1] for index in (0, 1, 4)}) == 3  # every toss is fresh


def test_a_last_speaker_is_named_by_every_honest_party(tosses):
    assert tosses[PARTIES - 1][2][0] == "cheated"
    for rank in range(PARTIES - 1):
        status, message = tosses[rank][2]
        assert status == "refused", (rank, message)
        assert message.startswith(f"party {PARTIES - 1} (party{PARTIES - 1}) opened a contribution")
        assert "not committed" in message


def test_an_equivocating_party_is_caught_by_every_honest_party(tosses):
    for rank in range(PARTIES - 1):
        status, message = tosses[rank][3]
        assert status == "refused", (rank, message)
        assert message.startswith(f"party {PARTIES - 1} (party{PARTIES - 1}) sent different commitments")
