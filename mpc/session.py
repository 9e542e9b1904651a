"""A secure session: one party's transport and protocol suite wired into CrypTen.

CrypTen finds its communicator through the module global
``crypten.communicator.DistributedCommunicator`` at call time; the session puts a small
adapter there whose instance is our transport, so MPCTensor, crypten.nn and the providers
run over it unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from mpc.compat import load_crypten
from protocols import ProtocolSuite

log = logging.getLogger(__name__)


def _communicator_adapter(transport: Any) -> type:
    """A class with CrypTen's communicator class methods, bound to one transport."""

    class InstalledTransport:
        instance: Any = None  # set by crypten.init() through initialize()

        @classmethod
        def is_initialized(cls) -> bool:
            return cls.instance is not None

        @classmethod
        def initialize(cls, rank: int = 0, world_size: int = 1, init_ttp: bool = False) -> None:
            cls.instance = transport

        @classmethod
        def get(cls) -> Any:
            return cls.instance

        @classmethod
        def shutdown(cls) -> None:
            cls.instance = None

    return InstalledTransport


class MpcSession:
    """Context manager: ``with MpcSession(transport, suite) as crypten: ...``."""

    def __init__(self, transport: Any, suite: ProtocolSuite, device: str = "cpu") -> None:
        self.transport = transport
        self.suite = suite
        self.device = torch.device(device)
        self.crypten = load_crypten()
        self._previous_communicator: Any = None

    def __enter__(self) -> Any:
        crypten = self.crypten
        communicator = crypten.communicator
        self._previous_communicator = communicator.DistributedCommunicator
        communicator.DistributedCommunicator = _communicator_adapter(self.transport)
        self.suite.install(crypten)
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
        crypten.communicator.DistributedCommunicator = self._previous_communicator

    @property
    def rank(self) -> int:
        return self.transport.get_rank()

    @property
    def world_size(self) -> int:
        return self.transport.get_world_size()
