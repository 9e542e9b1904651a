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

import dataclasses
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from mpc.checkpoint import CheckpointError, checkpoint_path, read_checkpoint, run_settings, save_checkpoint
from parties.config import RunConfig
from parties.outputs import process_usage, write_json
from parties.transport.group import PartyGroup
from protocols.dealer_wire import DealerEnd, DealerError, TupleMaker, answer_in_parts
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


# How much lower than the dealer's own the OS priority of an answer made ahead starts: the
# parties are computing meanwhile, and on a host they share with the dealer its guesses
# should take only the CPU time they leave idle
SPECULATIVE_NICE = 10


def _set_thread_nice(thread: threading.Thread | None, nice: int) -> None:
    """Best effort: a running thread's OS priority (None: the calling thread's; Linux threads
    have their own nice value; taking one back up may be refused to an unprivileged process,
    which then keeps the lower)."""
    if thread is not None and not thread.is_alive():
        return  # its id may be another's by now
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id() if thread is None else thread.native_id, nice)
    except (AttributeError, OSError):
        pass


class _Answer:
    """One answer being made in a thread of its own, at a lower OS priority from the start:
    the answer first, then its late part (``first_made`` is set in between, or once the
    thread is done, ``first`` None if the maker failed)."""

    def __init__(self, maker: TupleMaker, items: Any, nice: int) -> None:
        self.items, self.first, self.late = items, None, None
        self.error: BaseException | None = None
        self.first_made = threading.Event()
        self.thread = threading.Thread(target=self._make, args=(maker, nice), name="dealer-ahead", daemon=True)
        self.thread.start()

    def _make(self, maker: TupleMaker, nice: int) -> None:
        _set_thread_nice(None, nice)
        try:
            self.first, make_late = answer_in_parts(maker, self.items)
            self.first_made.set()
            self.late = None if make_late is None else make_late()
        except BaseException as error:  # raised where the late part is waited for
            self.error = error
        finally:
            self.first_made.set()

    def late_part(self) -> list[torch.Tensor] | None:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.late


class AnswerAhead:
    """One answer made in a background thread while the parties compute: a training step
    asks for the same tuples every time, so once a request repeats, the next one's answer
    (fresh tuples, each dealt once) is made before it is asked for. It is made at a lower OS
    priority (a guess must not slow the parties down) until the parties ask for it. An
    answer made for items that are not asked for next is dropped; with a maker whose deals
    may run at once (``concurrent``) the request is dealt without waiting for it."""

    def __init__(self, maker: TupleMaker) -> None:
        self.maker = maker
        self.answer: _Answer | None = None
        self.dropped: list[_Answer] = []  # a concurrent maker's, still running
        self.nice = os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else 0  # this thread's

    @property
    def items(self) -> Any:
        return None if self.answer is None else self.answer.items

    def start(self, items: Any) -> None:
        self.wait()
        self.answer = _Answer(self.maker, items, self.nice + SPECULATIVE_NICE)

    def wait(self) -> None:
        """Let a running answer finish (the maker is never used by two threads at once,
        unless it is ``concurrent``)."""
        if self.answer is not None:
            self.answer.thread.join()

    def close(self) -> None:
        """Let every answer still being made finish (at the dealer's priority), unused: a
        process that ends while a thread is inside torch aborts."""
        for answer in self.dropped + ([self.answer] if self.answer is not None else []):
            _set_thread_nice(answer.thread, self.nice)
            answer.thread.join()
        self.answer, self.dropped = None, []

    def take(self, items: Any, needed: bool = True) -> tuple[list, Callable[[], list | None]] | None:
        """The answer made ahead for ``items``, once, and a function that gives its late part
        (waiting for it: the answer can go while the late part is still being made); None if
        there is none for them. ``needed``: the parties wait for it (it is made at the
        dealer's own priority from now)."""
        answer, self.answer = self.answer, None
        if answer is None:
            return None
        if items != answer.items:
            if getattr(self.maker, "concurrent", False):
                self.dropped = [a for a in self.dropped if a.thread.is_alive()] + [answer]
            else:
                answer.thread.join()
            return None  # dropped (a concurrent maker's left to finish unseen)
        if needed:
            _set_thread_nice(answer.thread, self.nice)
        answer.first_made.wait()
        if answer.first is None:  # the maker failed in the thread: deal again, inline
            answer.thread.join()
            return None
        return answer.first, answer.late_part


def serve_tuples(transport: Any, parties: int, maker: TupleMaker) -> dict:
    """The dealer's serving loop, for every kind of dealer: greet every party, then answer
    each request (the same from every party) with ``maker``'s tuples until every party says
    stop. Returns what was served."""
    wire = DealerEnd(transport, parties)
    wire.hello(maker.kind, maker.greeting())
    served = {"requests": 0, "answers": 0, "late_parts": 0, "tuples": 0, "elements": 0, "made_ahead": 0,
              "dropped_ahead": 0, "inline_dealing_s": 0.0}
    ahead, previous = AnswerAhead(maker), None
    log.info("%s dealer serving %d parties", maker.kind, parties)
    try:
        while (items := wire.request()) is not None:
            try:
                items = maker.validate(items)
            except ValueError as error:
                wire.refuse(f"a malformed request: {error}")
                raise DealerError(f"a party sent a malformed request: {error}") from None
            served["requests"] += 1
            # a request that repeats the one before is a step that repeats: its next copy is
            # guessed (made ahead); the second copy of a request asked for twice is no such sign
            # (the parties' first step asks so for each of its runs, rarely the same twice)
            repeated, previous = items == previous, items
            for copy in range(1 + wire.again):  # a request for its items twice: as if asked for twice
                if copy and ahead.items != items:  # the second is collected later: made like a guess
                    ahead.start(items)
                guessed = ahead.items
                made = ahead.take(items, needed=not copy)
                served["made_ahead"] += made is not None
                served["dropped_ahead"] += guessed is not None and made is None
                start = time.perf_counter()
                first, make_late = answer_in_parts(maker, items) if made is None else made
                dealing = time.perf_counter() - start
                wire.answer(len(items), first)
                start = time.perf_counter()
                late = None if make_late is None else make_late()  # made while the parties open eps and delta
                if made is None:
                    served["inline_dealing_s"] += dealing + time.perf_counter() - start
                if late is not None:
                    wire.late(len(items), late)
                    served["late_parts"] += 1
                served["answers"] += 1
                served["tuples"] += len(items)
                served["elements"] += sum(int(buffer.numel()) for buffer in first + (late or []))
            if repeated:
                ahead.start(items)
    finally:
        ahead.close()  # an answer still being made ahead is dropped
    served["bytes_sent"] = wire.bytes_sent
    log.info("dealer done: %s", served)
    return served


def make_maker(config: RunConfig, directory: Path) -> TupleMaker:
    """The suite's tuple maker for this run. A maker with state the parties' saved shares
    depend on (``state_dict``: the malicious dealer's MAC key, under which every saved MAC
    holds) saves it into this run's folder as the run starts (the dealer's checkpoint), so
    that the run can be resumed (``train.resume``) and its shares scored (``cotrain predict
    shares=...``), and takes it back from the run it resumes or scores; the semi-honest maker
    has none (its tuples are fresh in a resumed run)."""
    maker = part_class("triple_source", config.protocol.triple_source).make_dealer(config.num_parties)
    if getattr(maker, "state_dict", None) is None:
        return maker
    rank = dealer_rank(config)
    if config.score.shares:  # the run whose shares are scored: its key, whatever this run's settings
        _take_back(maker, config.score.shares, rank, config.num_parties, None, f"shares={config.score.shares}")
        return maker
    settings = run_settings(dataclasses.asdict(config))
    if config.train.resume:
        _take_back(maker, config.train.resume, rank, config.num_parties, settings,
                   f"train.resume={config.train.resume}")
    save_checkpoint(checkpoint_path(directory.parent, DEALER_NAME), DEALER_NAME, rank, config.num_parties,
                    settings, {"dealer": maker.state_dict()})
    return maker


def _take_back(maker: Any, run_dir: str, rank: int, parties: int, settings: dict | None, where: str) -> None:
    """Give ``maker`` the state its dealer saved in ``run_dir`` (refused as ``read_checkpoint``
    says; ``settings`` None: whatever the settings of that run)."""
    saved = read_checkpoint(run_dir, DEALER_NAME, rank, parties, settings, where)
    try:
        maker.load_state_dict(saved["dealer"])
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"{where}: the dealer's checkpoint {checkpoint_path(run_dir, DEALER_NAME)} is "
                              f"unusable: {error}") from None
    log.info("dealing under the MAC key kept in %s", run_dir)


def serve(config: RunConfig, transport: Any, directory: Path) -> dict:
    """Answer the parties' requests until they are done; returns what was served."""
    return serve_tuples(transport, config.num_parties, make_maker(config, directory))


def run_dealer(config: RunConfig, transport: Any, directory: Path) -> None:
    """The dealer's whole run: serve, record what it served, send its traffic to the evaluator."""
    served = serve(config, transport, directory)
    write_json(directory / "dealer.json", served)
    report = {"name": DEALER_NAME, "rank": transport.get_rank(), **transport.stats.as_dict(), "saved": {},
              "protocol_parts": {"dealer": served}, **process_usage()}
    transport.send_obj(report, config.train.evaluator)


def receive_dealer_report(config: RunConfig, transport: Any) -> dict:
    """At the evaluator: the dealer's line for the per-party table and the totals."""
    return transport.recv_obj(dealer_rank(config))
