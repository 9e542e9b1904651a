"""The dealer, a party role: which runs have one, its rank and name, and its run.

A suite whose triple source ``needs_dealer`` adds one process to the run: rank
``num_parties`` (after every party), named ``dealer``. Whoever starts the parties starts it
too: the local launcher spawns it, mpirun and torchrun count it in their world size, and on
separate hosts it is one more ``cotrain run launch=host party.rank=<num_parties>``. The
parties compute among themselves (a :class:`PartyGroup` of the transport); the dealer
answers them over the same transport with its suite's request protocol (the triple
source's ``serve_dealer``) and ends by sending its traffic to the evaluator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from parties.config import RunConfig
from parties.outputs import peak_rss_bytes, write_json
from parties.transport.group import PartyGroup
from protocols.registry import part_class
from protocols.suite import needs_dealer

DEALER_NAME = "dealer"


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


def serve(config: RunConfig, transport: Any) -> dict:
    """Answer the parties' requests until they are done; returns what was served."""
    source = part_class("triple_source", config.protocol.triple_source)
    return source.serve_dealer(transport, config.num_parties)


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
