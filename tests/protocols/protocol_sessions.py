"""Run a function in N real party processes (plus a dealer when the suite needs one)."""

from __future__ import annotations

import traceback
from typing import Any, Callable

import torch

from launch.local import free_port
from launch.party_processes import core_share, party_context, start_party
from sessions import collect_results
from protocols import ProtocolConfig


def _open(rank: int, world: int, names: tuple[str, ...], port: int, timeout_s: float = 30) -> Any:
    from parties.transport import PartyAddress, TransportOptions, open_transport

    return open_transport(PartyAddress(rank, world, names),
                          TransportOptions(name="gloo", master_port=port, timeout_s=timeout_s, connect_timeout_s=30))


def _party(fn: Callable, rank: int, parties: int, dealer: bool, port: int, protocol: ProtocolConfig,
           results: Any, wire_timeout_s: float) -> None:
    from parties.transport.group import PartyGroup
    from mpc.session import MpcSession
    from protocols import ProtocolSuite

    names = tuple(f"party{i}" for i in range(parties)) + (("dealer",) if dealer else ())
    try:
        transport = _open(rank, len(names), names, port, wire_timeout_s)
        try:
            comm = PartyGroup(transport, parties) if dealer else transport
            with MpcSession(comm, ProtocolSuite(protocol)) as crypten:
                results.put((rank, "ok", fn(crypten, rank)))
        finally:
            transport.close()
    except BaseException as error:  # report to the test instead of dying silently
        results.put((rank, "error", f"{error.__class__.__name__}: {error}\n{traceback.format_exc()}"))


def _dealer(dealer_fn: Callable, parties: int, port: int, results: Any, wire_timeout_s: float) -> None:
    names = tuple(f"party{i}" for i in range(parties)) + ("dealer",)
    try:
        transport = _open(parties, parties + 1, names, port, wire_timeout_s)
        try:
            results.put((parties, "ok", dealer_fn(transport, parties)))
        finally:
            transport.close()
    except BaseException as error:
        results.put((parties, "error", f"{error.__class__.__name__}: {error}"))


def default_dealer(transport: Any, parties: int) -> Any:
    from parties.dealer import serve_tuples
    from protocols.dealer import SemiHonestMaker

    return serve_tuples(transport, parties, SemiHonestMaker(parties))


def run_parties(fn: Callable[[Any, int], Any], protocol: ProtocolConfig, parties: int = 2,
                dealer_fn: Callable | None = None, timeout_s: float = 120.0,
                wire_timeout_s: float = 30.0) -> dict[int, tuple[str, Any]]:
    """``fn(crypten, rank)`` in each party; returns {rank: (status, value)} (the dealer's too)."""
    from protocols.suite import needs_dealer

    dealer = needs_dealer(protocol)
    context = party_context()
    results = context.Queue()
    port = free_port()
    threads = core_share(parties + dealer)
    processes = [start_party(context, _party, (fn, rank, parties, dealer, port, protocol, results, wire_timeout_s),
                             f"party{rank}", threads) for rank in range(parties)]
    if dealer:
        processes.append(start_party(context, _dealer, (dealer_fn or default_dealer, parties, port, results,
                                                        wire_timeout_s), "dealer", threads))
    return collect_results(results, processes, timeout_s, join_s=10)


def party_values(collected: dict[int, tuple[str, Any]], parties: int) -> list[Any]:
    """The parties' results; fails the test with the first party error."""
    for rank in range(parties):
        if rank not in collected:
            raise AssertionError(f"party {rank} did not report (collected: {sorted(collected)})")
        status, value = collected[rank]
        if status != "ok":
            raise AssertionError(f"party {rank} failed: {value}")
    return [collected[rank][1] for rank in range(parties)]


def exact_products(crypten: Any, rank: int) -> dict[str, bool]:
    """Products of integer sharings (precision 0: no truncation) against torch's in the ring:
    the Beaver product's two local products per party (protocols.crypten_hooks) are exact,
    the elementwise one of equal shapes accumulated in place, a broadcast one as the rest."""
    from crypten.mpc import MPCTensor

    out = {}
    for op, size0, size1 in (("mul", (5, 7), (5, 7)), ("mul", (5, 7), (7,)), ("matmul", (6, 4), (4, 3))):
        generator = torch.Generator().manual_seed(len(out))
        values = [torch.randint(-(1 << 63), (1 << 63) - 1, size, generator=generator) for size in (size0, size1)]
        # re-randomised, so that every party's share is uniform
        x, y = (MPCTensor.from_shares(v if rank == 0 else torch.zeros_like(v), precision=0)
                + crypten.cryptensor(torch.zeros(v.shape), precision=0) for v in values)
        out[f"{op} {size0} {size1}"] = torch.equal(getattr(x, op)(y).get_plain_text(), getattr(torch, op)(*values))
    return out
