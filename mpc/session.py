"""A secure session: one party's transport and protocol suite wired into CrypTen.

CrypTen finds its communicator through the module global
``crypten.communicator.DistributedCommunicator`` at call time; the session puts a small
adapter there whose instance is our transport (with CrypTen's call accounting, see
``mpc.communicator``), so MPCTensor, crypten.nn and the providers run over it unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from mpc.communicator import CrypTenCommunicator
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
            cls.instance = CrypTenCommunicator(transport)

        @classmethod
        def get(cls) -> Any:
            return cls.instance

        @classmethod
        def shutdown(cls) -> None:
            cls.instance = None

    return InstalledTransport


class _ConfigView:
    """A caching view of one node of crypten's OmegaConf config tree.

    crypten reads ``cfg.<group>.<key>`` through OmegaConf on almost every tensor operation
    (tens of microseconds a lookup: a sixth of a training step's CPU time). Reads are cached
    here; writes go to the OmegaConf node and drop the cached value.
    """

    __slots__ = ("_node", "_cache")

    def __init__(self, node: Any) -> None:
        object.__setattr__(self, "_node", node)
        object.__setattr__(self, "_cache", {})

    def __getattr__(self, name: str) -> Any:
        cache = object.__getattribute__(self, "_cache")
        try:
            return cache[name]
        except KeyError:
            pass
        value = getattr(object.__getattribute__(self, "_node"), name)
        if hasattr(value, "_get_node"):  # an OmegaConf container
            value = _ConfigView(value)
        cache[name] = value
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(object.__getattribute__(self, "_node"), name, value)
        object.__getattribute__(self, "_cache").pop(name, None)


def _fast_config_class(base: type) -> type:
    """``base`` (crypten's CrypTenConfig) reading through a :class:`_ConfigView` of whatever
    tree it holds now; ``temp_override`` and ``load_config`` swap the tree, and the view
    follows."""

    def __getattribute__(self: Any, name: str) -> Any:
        if name.startswith("_") or name in _CONFIG_ATTRIBUTES:
            return object.__getattribute__(self, name)
        state = object.__getattribute__(self, "__dict__")
        config = state["config"]
        view = state.get("_view")
        if view is None or view[0] is not config:
            view = state["_view"] = (config, _ConfigView(config))
        result = view[1]
        for key in name.split("."):
            result = getattr(result, key)
        return result

    return type("FastCrypTenConfig", (base,), {"__getattribute__": __getattribute__})


_CONFIG_ATTRIBUTES = {"config", "load_config", "set_config", "temp_override", "save_config",
                      "__dict__", "__class__"}


class MpcSession:
    """Context manager: ``with MpcSession(transport, suite) as crypten: ...``."""

    def __init__(self, transport: Any, suite: ProtocolSuite, device: str = "cpu") -> None:
        self.transport = transport
        self.suite = suite
        self.device = torch.device(device)
        self.crypten = load_crypten()
        self._previous_communicator: Any = None
        self._config_class: type | None = None

    def __enter__(self) -> Any:
        crypten = self.crypten
        communicator = crypten.communicator
        self._previous_communicator = communicator.DistributedCommunicator
        communicator.DistributedCommunicator = _communicator_adapter(self.transport)
        self._config_class = type(crypten.cfg)
        crypten.cfg.__class__ = _fast_config_class(self._config_class)
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
        if self._config_class is not None:
            crypten.cfg.__class__ = self._config_class
            vars(crypten.cfg).pop("_view", None)

    @property
    def rank(self) -> int:
        return self.transport.get_rank()

    @property
    def world_size(self) -> int:
        return self.transport.get_world_size()
