"""The dealer, a party role: which runs have one, its rank and name, and its run.

A suite whose triple source ``needs_dealer`` adds one process to the run: rank
``num_parties`` (after every party), named ``dealer``. Whoever starts the parties starts it
too: the local launcher spawns it, mpirun and torchrun count it in their world size, and on
separate hosts it is one more ``cotrain run launch=host party.rank=<num_parties>``. The
parties compute among themselves (a :class:`PartyGroup` of the transport); the dealer
answers them over the same transport (:func:`serve_tuples`, the one serving loop, speaking
the one wire protocol of ``protocols.dealer_wire``, with the tuples made by the suite's own
maker, the triple source's ``make_dealer``) and ends by sending its traffic to the evaluator.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from parties.config import RunConfig
from parties.outputs import peak_rss_bytes, write_json
from parties.transport.group import PartyGroup
from protocols.dealer_wire import DealerEnd, DealerError, TupleMaker
from protocols.registry import part_class
from protocols.suite import needs_dealer

DEALER_NAME = "dealer"
log = logging.getLogger("cotrain.dealer")


def has_dealer(config: RunConfig) -> bool:
    """Whether this run has a dealer process (its suite's triple source needs one)."""
    return needs_dealer(config.protocol)


def world_size(config: RunConfig) -> int:
    """Processes in the run: the parties, and the dealer where the suite has one."""
    return config.num_parties + int(has_dealer(config))


def process_names(config: RunConfig) -> tuple[str, ...]:
    """Every process's name by rank; the dealer's comes last."""
    return config.names() + ((DEALER_NAME,) if has_dealer(config) else ())


def dealer_rank(config: RunConfig) -> int:
    """The dealer's rank, where the suite has one: right after the parties."""
    return config.num_parties


def is_dealer(config: RunConfig, rank: int) -> bool:
    return rank == dealer_rank(config) and has_dealer(config)


def party_world(config: RunConfig, transport: Any) -> Any:
    """The parties' own communicator: the transport without the dealer's rank."""
    return PartyGroup(transport, config.num_parties) if has_dealer(config) else transport


class AnswersAhead:
    """Answers made in a background thread while the parties compute. A training step asks
    for the same sequence of requests every time (one, or several bounded answers), so the
    dealer learns which request followed which and, once a request recurs, makes the
    answers expected after it (fresh tuples, each dealt once), up to ``depth`` ahead: the
    memory of ``depth`` answers buys the parties' wait for each one."""

    def __init__(self, maker: TupleMaker, depth: int = 2) -> None:
        self.maker = maker
        self.depth = depth
        self.previous: Any = None
        self.inline_s = 0.0  # time spent making answers that were not made ahead
        self.following: dict[str, Any] = {}  # a request -> the request that came after it last time
        self.made: deque = deque()  # (items, buffers) made ahead, in the order expected
        self.thread: threading.Thread | None = None
        self.making = False  # whether the thread may still add an answer (set and cleared under ``ready``)
        self.ready = threading.Condition()

    def answer(self, items: Any) -> tuple[list, bool]:
        """Each party's buffer for ``items`` (the request every party sent), and whether it
        was made ahead; then the answers expected next are started."""
        if self.previous is not None:
            self.following[_request_key(self.previous)] = items
        self.previous = items
        buffers = self._take(items)
        made_ahead = buffers is not None
        if buffers is None:
            start = time.perf_counter()
            buffers = self.maker.deal(items)
            self.inline_s += time.perf_counter() - start
        self._fill(items)
        return buffers, made_ahead

    def _take(self, items: Any) -> list | None:
        """The answer made ahead for ``items``, once; None if the next one made is not for
        them (then whatever was made ahead is dropped)."""
        with self.ready:
            while not self.made and self.making:
                self.ready.wait()
            if self.made and self.made[0][0] == items:
                return self.made.popleft()[1]
        self._wait()
        self.made.clear()
        return None

    def _fill(self, items: Any) -> None:
        """Start making the answers expected after ``items`` (after those made already)."""
        with self.ready:
            if self.making:
                return  # it goes on making the expected ones until ``depth`` are waiting
            self.making = True
        self._wait()
        last = self.made[-1][0] if self.made else items
        self.thread = threading.Thread(target=self._make, args=(last,), name="dealer-ahead", daemon=True)
        self.thread.start()

    def _make(self, last: Any) -> None:
        try:
            while len(self.made) < self.depth and (expected := self.following.get(_request_key(last))) is not None:
                buffers = self.maker.deal(expected)
                with self.ready:
                    self.made.append((expected, buffers))
                    self.ready.notify_all()
                last = expected
        finally:  # a ``take`` waiting for an answer that will not come stops waiting
            with self.ready:
                self.making = False
                self.ready.notify_all()

    def _wait(self) -> None:
        """Let a running answer finish (the maker is never used by two threads at once)."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None


def _request_key(items: Any) -> str:
    return json.dumps(items, separators=(",", ":"))


def serve_tuples(transport: Any, parties: int, maker: TupleMaker) -> dict:
    """The dealer's serving loop, for every kind of dealer: greet every party, then answer
    each request (the same from every party) with ``maker``'s tuples until every party says
    stop. Returns what was served."""
    wire = DealerEnd(transport, parties)
    wire.hello(maker.kind, maker.greeting())
    served = {"requests": 0, "tuples": 0, "elements": 0, "made_ahead": 0}
    ahead = AnswersAhead(maker)
    log.info("%s dealer serving %d parties", maker.kind, parties)
    while (items := wire.request()) is not None:
        try:
            items = maker.validate(items)
        except ValueError as error:
            wire.refuse(f"a malformed request: {error}")
            raise DealerError(f"a party sent a malformed request: {error}") from None
        buffers, made_ahead = ahead.answer(items)
        served["made_ahead"] += made_ahead
        wire.answer(len(items), buffers)
        served["requests"] += 1
        served["tuples"] += len(items)
        served["elements"] += sum(int(buffer.numel()) for buffer in buffers)
    served["inline_dealing_s"] = ahead.inline_s
    # an answer still being made ahead is dropped: its daemon thread ends with the process
    served["bytes_sent"] = wire.bytes_sent
    log.info("dealer done: %s", served)
    return served


def serve(config: RunConfig, transport: Any) -> dict:
    """Answer the parties' requests until they are done; returns what was served."""
    source = part_class("triple_source", config.protocol.triple_source)
    return serve_tuples(transport, config.num_parties, source.make_dealer(config.num_parties))


def run_dealer(config: RunConfig, transport: Any, directory: Path) -> None:
    """The dealer's whole run: serve, record what it served, send its traffic to the evaluator."""
    served = serve(config, transport)
    write_json(directory / "dealer.json", served)
    report = {"name": DEALER_NAME, "rank": transport.get_rank(), **transport.stats.as_dict(), "saved": {},
              "protocol_parts": {"dealer": served}, "peak_rss_bytes": peak_rss_bytes()}
    transport.send_obj(report, config.train.evaluator)


def receive_dealer_report(config: RunConfig, transport: Any) -> dict:
    """At the evaluator: the dealer's line for the per-party table and the totals."""
    return transport.recv_obj(dealer_rank(config))
