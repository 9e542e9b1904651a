"""Pluggable protocol parts; see ``registry`` and ``suite``."""

from protocols.parts import PartCounters, ProtocolPart, TripleSource
from protocols.registry import PART_KINDS, part_names, register_part
from protocols.suite import ProtocolConfig, ProtocolSuite

__all__ = [
    "PART_KINDS",
    "PartCounters",
    "ProtocolConfig",
    "ProtocolPart",
    "ProtocolSuite",
    "TripleSource",
    "part_names",
    "register_part",
]
