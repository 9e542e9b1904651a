"""The interfaces of protocol parts and the accounting they share."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any, Sequence

import torch


@dataclass
class PartCounters:
    """What a part cost, split into preprocessing (offline) and online work."""

    calls: int = 0
    tuples: int = 0
    offline_bytes: int = 0
    offline_rounds: int = 0
    online_bytes: int = 0
    online_rounds: int = 0
    # the wire counters (``stats``) of the transport the part talks over, read by ``metered``
    wire: Any = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "wire"}

    def add(self, phase: str, nbytes: int, rounds: int) -> None:
        if phase not in ("offline", "online"):
            raise ValueError(f"phase is offline or online, not {phase!r}")
        setattr(self, f"{phase}_bytes", getattr(self, f"{phase}_bytes") + int(nbytes))
        setattr(self, f"{phase}_rounds", getattr(self, f"{phase}_rounds") + int(rounds))


_meter = threading.local()


def _wire_totals(stats: Any) -> tuple[int, int]:
    """Bytes (sent + received) and rounds a transport has counted so far (none before a
    part is given its transport)."""
    if stats is None:
        return 0, 0
    return stats.bytes_sent + stats.bytes_received, stats.rounds


class metered:
    """``with metered(counters, phase):`` charges the bytes and rounds spent inside to
    ``counters`` under ``phase``.

    Meters nest: traffic of an inner metered block (a tuple fetched inside a Beaver
    multiplication) is charged to the inner part only, never twice. A class, not a generator
    context manager: every product, division and tuple request enters one (hundreds a
    training step), and a generator's costs twice the Python calls.
    """

    __slots__ = ("counters", "phase", "_stack", "_start", "_frame")

    def __init__(self, counters: PartCounters, phase: str) -> None:
        self.counters, self.phase = counters, phase

    def __enter__(self) -> None:
        stack = getattr(_meter, "stack", None)
        if stack is None:
            stack = _meter.stack = []
        self._stack, self._start = stack, _wire_totals(self.counters.wire)
        self._frame = [0, 0]  # bytes, rounds charged to nested blocks
        stack.append(self._frame)

    def __exit__(self, *exc_info: Any) -> None:
        stack, frame = self._stack, self._frame
        stack.pop()
        end_bytes, end_rounds = _wire_totals(self.counters.wire)
        total_bytes, total_rounds = end_bytes - self._start[0], end_rounds - self._start[1]
        self.counters.add(self.phase, total_bytes - frame[0], total_rounds - frame[1])
        if stack:
            stack[-1][0] += total_bytes
            stack[-1][1] += total_rounds


class ProtocolPart(ABC):
    """A named, swappable primitive. ``install`` wires it into CrypTen's extension points.

    ``comm`` is the transport of the computing parties (ranks ``0..parties-1``; where the
    suite has a dealer, it is rank ``parties`` of the same transport), given by the session
    before ``install``: a part talks over it, never over CrypTen's global communicator.
    """

    part_name: str = ""
    testing_only: bool = False
    suite: Any = None  # the suite this part belongs to, set when the suite is built

    def __init__(self) -> None:
        self.counters = PartCounters()
        self.comm: Any = None

    def connect(self, comm: Any) -> None:
        """Talk over ``comm`` (and count its traffic) from now on."""
        self.comm = comm
        self.counters.wire = comm.stats

    @abstractmethod
    def install(self, crypten: Any) -> None:
        """Point CrypTen at this part (its provider table, its config, its functions)."""

    def uninstall(self, crypten: Any) -> None:
        """Undo ``install``; parts that only set config need nothing here."""

    def start(self, crypten: Any) -> None:
        """Called once ``crypten.init`` has run (the communicator and generators exist)."""

    def stop(self, crypten: Any) -> None:
        """Called before ``crypten.uninit``, while the communicator still works."""

    def describe(self) -> str:
        return self.part_name


class UnsupportedTuple(RuntimeError):
    """The configured triple source cannot make the tuple CrypTen asked for."""


class TripleSource(ProtocolPart):
    """Where Beaver triples and the other correlated tuples come from.

    A source installs a CrypTen tuple provider (``generate_additive_triple``, ``square``,
    ``generate_binary_triple``, ``wrap_rng``, ``B2A_rng``) and may offer
    :meth:`truncation_pair` for the ``pairs`` truncation. ``needs_dealer`` asks for a dealer
    process, which serves the tuples of the source's ``make_dealer(parties)``, a
    ``protocols.dealer_wire.TupleMaker`` (see ``parties.dealer``); ``max_parties`` limits the party count.
    """

    needs_dealer: bool = False
    max_parties: int | None = None

    def supports_divisor(self, divisor: int) -> bool:
        """Whether :meth:`truncation_pair` can make pairs for this divisor."""
        return True

    def expect(self, keys: Sequence[tuple]) -> None:
        """A hint: the next tuples asked for are ``keys`` (as ``protocols.tuples`` names
        them), in this order. A source that fetches in batches may fetch them together."""

    def sign_mask(self, size: Any, device: Any = None) -> tuple[Any, Any, Any]:
        """An arithmetic sharing of a uniform ring r, an XOR sharing of the word s = -r and
        one of its bit pairs' ANDs (``protocols.bitpack.pair_products``)."""
        raise UnsupportedTuple(f"triple source {self.part_name!r} does not provide sign masks")

    def deals_relu_masks(self) -> bool:
        """Whether this source overrides :meth:`relu_mask`."""
        return type(self).relu_mask is not TripleSource.relu_mask

    def relu_mask(self, size: Any, device: Any = None) -> list[torch.Tensor]:
        """This party's shares (int64 tensors, in ``protocols.tuples.tuple_layout``'s order for
        ``relumask``) of a uniform ring r, the word -r and its bit pairs' ANDs (XOR), a uniform
        bit u (arithmetic and XOR), r u, a uniform ring a and a u."""
        raise UnsupportedTuple(f"triple source {self.part_name!r} does not provide ReLU masks")

    def deals_carry4(self) -> bool:
        """Whether this source overrides :meth:`carry4_tuple`."""
        return type(self).carry4_tuple is not TripleSource.carry4_tuple

    def carry4_tuple(self, size: Any, device: Any = None) -> list[torch.Tensor]:
        """This party's XOR shares (int64 tensors of ``size``) of a ``carry4`` tuple: seven
        uniform words and the ANDs of the subsets ``protocols.carry4.SUBSETS`` of them."""
        raise UnsupportedTuple(f"triple source {self.part_name!r} does not provide carry4 tuples")

    def truncation_pair(self, size: Any, bits: int, device: Any = None) -> tuple[Any, Any, Any]:
        """Arithmetic sharings of (r, msb(r), (r mod 2^63) >> bits) for a uniform ring r."""
        raise UnsupportedTuple(f"triple source {self.part_name!r} does not provide truncation pairs")

    def deals_wrap_bits(self) -> bool:
        """Whether this source overrides :meth:`wrap_bit_tuple`."""
        return type(self).wrap_bit_tuple is not TripleSource.wrap_bit_tuple

    def wrap_bit_tuple(self, size: Any, device: Any = None, bits: int = 64) -> tuple[Any, Any]:
        """Two parties: a uniform int64 word whose top bit is this party's private bit u_i, and
        its arithmetic share of u0 u1 (shares that add up to it mod 2^``bits`` at least), for
        the ``topbits`` truncation."""
        raise UnsupportedTuple(f"triple source {self.part_name!r} does not provide wrap-bit tuples")
