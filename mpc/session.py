"""A secure session: one party's transport and protocol suite wired into CrypTen.

CrypTen finds its communicator through a module global at call time; the session has
``protocols.crypten_hooks`` put our transport there (with CrypTen's call accounting, see
``mpc.communicator``), so MPCTensor, crypten.nn and the providers run over it unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from mpc.communicator import CrypTenCommunicator
from protocols import ProtocolSuite
from protocols.crypten_hooks import install_session, load_crypten, uninstall_session

log = logging.getLogger(__name__)


class MpcSession:
    """Context manager: ``with MpcSession(transport, suite) as crypten: ...``."""

    def __init__(self, transport: Any, suite: ProtocolSuite, device: str = "cpu") -> None:
        self.transport = transport
        self.suite = suite
        self.device = torch.device(device)
        self.crypten = load_crypten()

    def __enter__(self) -> Any:
        crypten = self.crypten
        install_session(crypten, lambda: CrypTenCommunicator(self.transport))
        self.suite.install(crypten, self.transport)
        crypten.init(device=self.device if self.device.type == "cuda" else None)
        self.suite.start(crypten)
        log.debug("secure session started for rank %d", self.transport.get_rank())
        return crypten

    def __exit__(self, *exc_info: Any) -> None:
        crypten = self.crypten
        if crypten.is_initialized():
            try:
                self.suite.stop(crypten)
            finally:
                crypten.uninit()
        self.suite.uninstall(crypten)
        uninstall_session(crypten)

    @property
    def rank(self) -> int:
        return self.transport.get_rank()

    @property
    def world_size(self) -> int:
        return self.transport.get_world_size()
