"""The peer watch (gloo and MPI): a peer's death ends a party's wait on the wire, but not
before the party has had DEATH_GRACE_S to finish a wait on another, live peer."""

from __future__ import annotations

import os
import time

import torch

from helpers import address, free_ports, run_parties
from parties.transport import TransportOptions, open_transport
from parties.transport.peer_watch import DEATH_GRACE_S


def _one_leaves_early(rank: int, port: int) -> float:
    transport = open_transport(address(rank, 3), TransportOptions(name="gloo", master_port=port, timeout_s=30,
                                                                  connect_timeout_s=30))
    if rank == 1:  # as a party that found a failed check and stopped: it leaves without a word
        os._exit(0)
    message = torch.zeros(4, dtype=torch.int64)
    if rank == 0:
        time.sleep(DEATH_GRACE_S / 4)  # behind its peers, as under load
        transport.send(torch.arange(4), 2)
        return 0.0
    started = time.monotonic()
    message = transport.recv(message, 0)  # party 1 is gone by now; party 0 is not
    assert torch.equal(message, torch.arange(4))
    return time.monotonic() - started


def test_a_wait_on_a_live_peer_completes_after_another_peer_left():
    results = run_parties(_one_leaves_early, 3, free_ports(1)[0], timeout_s=60)
    assert results[0] == (True, 0.0), results
    ok, waited = results[2]
    assert ok and waited < DEATH_GRACE_S, results
