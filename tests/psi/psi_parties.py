"""PSI over real zmq transports in spawned processes, recording every frame a party sends."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "transport"))

from helpers import address, run_parties, values, zmq_options  # noqa: E402
from parties.transport.p2p import flat_bytes  # noqa: E402
from parties.transport.zmq_transport import ZmqTransport  # noqa: E402


class RecordingZmq(ZmqTransport):
    """The zmq transport, keeping a copy of every frame (header and payload) it sends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.frames: list[bytes] = []
        super().__init__(*args, **kwargs)

    def _send_frame(self, dst: int, header: dict, buffer: np.ndarray) -> Any:
        self.frames.append(msgpack.packb(header, use_bin_type=True) + bytes(flat_bytes(buffer)))
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
