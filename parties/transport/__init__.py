"""Transports: complete implementations of CrypTen's communicator surface."""

from parties.transport.base import PartyAddress, Transport, TransportError, TransportOptions
from parties.transport.registry import open_transport, register_transport, transport_names
from parties.transport.wire import WireError

__all__ = [
    "PartyAddress",
    "Transport",
    "TransportError",
    "TransportOptions",
    "WireError",
    "open_transport",
    "register_transport",
    "transport_names",
]
