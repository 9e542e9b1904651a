"""The one wire protocol between a dealer process and the parties, for every kind of dealer.

Every message is a msgpack header (the transport's ``send_obj``: nothing is unpickled),
followed, where the header announces ``elements > 0``, by one raw int64 buffer of exactly
that many elements:

* dealer -> each party, once at the start: ``{"op": "hello", "dealer": kind, "elements": n}``
  and the party's greeting (the malicious dealer's share of its MAC key; nothing for the
  semi-honest one). A party refuses a dealer of another kind.
* each party -> dealer: ``{"op": "deal", "items": [...]}`` (the tuples it needs next, in
  the kind's own terms), with ``"again": true`` where the same items are wanted twice (a
  batch that is used now and asked for ahead, to be collected later: one request, two
  answers), or ``{"op": "stop"}``. Every party sends every request (the
  program is the same everywhere); the dealer refuses requests that differ, naming the
  parties, so no party can steer another's preprocessing.
* dealer -> each party: ``{"op": "answer", "items": k, "elements": n}`` and that party's
  shares, in request order (twice for ``again``), or ``{"op": "refused", "error": why}``.
  A kind whose maker deals in parts (``deal_parts``) may leave some shares out of the answer
  and send them right after it, before anything else: ``{"op": "late", "items": k,
  "elements": n}`` and the buffer, to each party that has late shares (both sides know which
  from the items alone), so the parties work with the rest meanwhile. A party receives it
  before it sends the dealer anything more (a send may wait for its receiver).

What the items and the buffers mean belongs to the dealer's kind (:class:`TupleMaker`,
made by a triple source's ``make_dealer``); the dealer's serving loop is
``parties.dealer.serve_tuples``. A party checks every header against what it asked for,
so a dealer that dies, stalls, refuses or frames anything but exactly the elements asked
for stops the run with a :class:`DealerError` naming the dealer.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch

MAX_ELEMENTS = 1 << 30  # per buffer: a bound on what either side will allocate for a header's word


class DealerError(RuntimeError):
    """The dealer failed, stopped answering, refused, or sent something malformed."""


class TupleMaker(Protocol):
    """The kind-specific half of a dealer: it makes tuples in the clear and splits them."""

    kind: str  # the triple source's name, announced in the hello

    def greeting(self) -> list[torch.Tensor]:
        """Each party's first buffer (int64, 1-D; may be empty)."""

    def validate(self, items: Any) -> list:
        """The request's items, checked and normalised; ValueError naming what is wrong."""

    def deal(self, items: Sequence[Any]) -> list[torch.Tensor]:
        """Each party's shares of ``items`` as one int64 buffer, in request order."""


def answer_in_parts(maker: Any, items: Sequence[Any]) -> tuple[list[torch.Tensor], Callable[[], list[torch.Tensor]] | None]:
    """``maker``'s answer to ``items``, and a function that makes its late part (None where
    there is none, or the maker does not deal in parts)."""
    deal_parts = getattr(maker, "deal_parts", None)
    return deal_parts(items) if deal_parts is not None else (maker.deal(items), None)


def check_header(header: Any, op: str, who: str, **expected: int) -> int:
    """The element count a well-formed ``op`` header announces; DealerError otherwise."""
    if isinstance(header, dict) and header.get("op") == "refused" and op == "answer":
        raise DealerError(f"{who} refused the request: {str(header.get('error'))[:500]}")
    elements = header.get("elements") if isinstance(header, dict) else None
    if (not isinstance(header, dict) or header.get("op") != op or not isinstance(elements, int)
            or not 0 <= elements <= MAX_ELEMENTS or any(header.get(k) != v for k, v in expected.items())):
        wanted = ", ".join(f"{k} {v}" for k, v in expected.items())
        raise DealerError(f"{who} sent a malformed {op}: expected {op} ({wanted}), got {str(header)[:200]}")
    return elements


class DealerLink:
    """A party's end of the wire to the dealer (rank ``dealer`` of ``comm``)."""

    def __init__(self, comm: Any, dealer: int) -> None:
        self.comm = comm
        self.dealer = dealer
        self.who = f"the dealer (rank {dealer})"

    def hello(self, kind: str) -> torch.Tensor:
        """The dealer's greeting to this party; a dealer of another kind is refused."""
        return self._receive("hello", dealer=kind)

    def request(self, items: list, again: bool = False) -> None:
        """Ask for ``items`` (``again``: twice, two answers in a row)."""
        with self._one_flight():
            self._send({"op": "deal", "items": items, **({"again": True} if again else {})})

    def answer(self, items: int, elements: int) -> torch.Tensor:
        """This party's shares of the last request's ``items`` tuples: exactly ``elements``."""
        with self._one_flight():
            return self._receive("answer", items=items, elements=elements)

    def late(self, items: int, elements: int) -> torch.Tensor:
        """The late part of the answer to ``items`` tuples (its own message, so one round)."""
        with self._one_flight():
            return self._receive("late", items=items, elements=elements)

    @contextmanager
    def _one_flight(self) -> Iterator[None]:
        """A request (its size, then its header) or an answer (size, header, buffer) is one
        message each way, however many transport messages carry it: one round."""
        stats = getattr(self.comm, "stats", None)
        rounds = stats.rounds if stats is not None else 0
        yield
        if stats is not None:
            stats.rounds = rounds + 1

    def stop(self) -> None:
        self._send({"op": "stop"})

    def _send(self, message: dict) -> None:
        try:
            self.comm.send_obj(message, self.dealer)
        except Exception as error:
            raise DealerError(f"{self.who} cannot be reached: {error.__class__.__name__}: {error}") from None

    def _receive(self, op: str, **expected: Any) -> torch.Tensor:
        try:
            header = self.comm.recv_obj(self.dealer)
        except Exception as error:
            raise DealerError(f"{self.who} failed or stopped answering: {error.__class__.__name__}: {error}") from None
        elements = check_header(header, op, self.who, **expected)
        if not elements:
            return torch.empty(0, dtype=torch.int64)
        try:
            return self.comm.recv(torch.empty(elements, dtype=torch.int64), self.dealer)
        except Exception as error:
            raise DealerError(f"{self.who} failed while sending its {op}: {error.__class__.__name__}: {error}") from None


class DealerEnd:
    """The dealer's end of the wire to parties ``0..parties-1`` of ``comm``."""

    def __init__(self, comm: Any, parties: int) -> None:
        self.comm = comm
        self.parties = parties
        self.bytes_sent = 0
        self.again = False  # whether the last request asked for its items twice

    def hello(self, kind: str, greetings: Sequence[torch.Tensor]) -> None:
        for rank, buffer in enumerate(greetings):
            self._send(rank, {"op": "hello", "dealer": kind}, buffer)

    def request(self) -> Any:
        """The next request's items, the same from every party; None once every party said stop."""
        requests = [self.comm.recv_obj(rank) for rank in range(self.parties)]
        ops = [r.get("op") if isinstance(r, dict) else None for r in requests]
        if all(op == "stop" for op in ops):
            return None
        # "again" is a bool or absent: a 1 would equal another party's True, yet not be True here
        malformed = [rank for rank, op in enumerate(ops)
                     if op not in ("deal", "stop") or not isinstance(requests[rank].get("again", False), bool)]
        stopped = [rank for rank, op in enumerate(ops) if op == "stop"]
        differing = [rank for rank, r in enumerate(requests) if ops[rank] == "deal" and
                     (r.get("items"), r.get("again", False)) != (requests[0].get("items"), requests[0].get("again", False))]
        if malformed or stopped or differing:
            why = (f"parties {malformed} sent malformed requests" if malformed else
                   f"parties {stopped} stopped while others asked for tuples" if stopped else
                   f"the parties' requests differ (parties {differing} disagree with party 0)")
            self.refuse(f"{why}; refusing to deal", [rank for rank in range(self.parties) if rank not in stopped])
            raise DealerError(why)
        self.again = requests[0].get("again", False)
        return requests[0].get("items")

    def answer(self, items: int, buffers: Sequence[torch.Tensor]) -> None:
        for rank, buffer in enumerate(buffers):
            self._send(rank, {"op": "answer", "items": items}, buffer)

    def late(self, items: int, buffers: Sequence[torch.Tensor]) -> None:
        """The answer's late part, to each party that has one."""
        for rank, buffer in enumerate(buffers):
            if buffer.numel():
                self._send(rank, {"op": "late", "items": items}, buffer)

    def refuse(self, why: str, ranks: Sequence[int] | None = None) -> None:
        """Tell the parties waiting for an answer (default: all) why there is none."""
        for rank in range(self.parties) if ranks is None else ranks:
            self.comm.send_obj({"op": "refused", "error": why}, rank)

    def _send(self, rank: int, header: dict, buffer: torch.Tensor) -> None:
        if buffer.dtype != torch.int64 or buffer.dim() != 1:
            raise TypeError(f"a dealer buffer is a 1-D int64 tensor, not {buffer.dtype} of shape {tuple(buffer.shape)}")
        self.comm.send_obj({**header, "elements": int(buffer.numel())}, rank)
        if buffer.numel():
            self.comm.send(buffer, rank)
        self.bytes_sent += buffer.numel() * 8
