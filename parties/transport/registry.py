"""Transports by name, the way torch.distributed registers backends: a name maps to a
constructor, and the config's ``transport.name`` picks one."""

from __future__ import annotations

from typing import Callable

from parties.transport.base import PartyAddress, Transport, TransportOptions

TransportFactory = Callable[[PartyAddress, TransportOptions], Transport]
_FACTORIES: dict[str, TransportFactory] = {}


def register_transport(name: str, factory: TransportFactory) -> None:
    if name in _FACTORIES:
        raise ValueError(f"transport {name!r} is already registered")
    _FACTORIES[name] = factory


def transport_names() -> list[str]:
    return sorted(_FACTORIES)


def open_transport(address: PartyAddress, options: TransportOptions) -> Transport:
    try:
        factory = _FACTORIES[options.name]
    except KeyError:
        raise ValueError(
            f"transport={options.name!r} is not a known transport; choose one of "
            f"{', '.join(transport_names())}"
        ) from None
    return factory(address, options)


def _gloo(address: PartyAddress, options: TransportOptions) -> Transport:
    from parties.transport.torch_dist import TorchDistributedTransport

    return TorchDistributedTransport(address, options, backend="gloo")


def _zmq(address: PartyAddress, options: TransportOptions) -> Transport:
    from parties.transport.zmq_transport import ZmqTransport

    return ZmqTransport(address, options)


def _mpi(address: PartyAddress, options: TransportOptions) -> Transport:
    from parties.transport.mpi_transport import MpiTransport

    return MpiTransport(address, options)


register_transport("gloo", _gloo)
register_transport("mpi", _mpi)
register_transport("zmq", _zmq)
