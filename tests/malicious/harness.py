"""Spawn N computing parties plus the malicious-suite dealer over the gloo transport."""

from __future__ import annotations

import traceback
from typing import Any, Callable

from launch.local import free_port
from launch.party_processes import core_share, party_context, start_party
from sessions import collect_results


def _process(fn: Callable, rank: int, parties: int, port: int, authenticated: bool, kwargs: dict,
             results: Any, dealer_type: Any = None, dealer_kwargs: dict | None = None) -> None:
    from parties.transport import PartyAddress, TransportOptions, open_transport
    from parties.dealer import serve_tuples
    from protocols.malicious.dealer import Dealer

    names = tuple(f"party{i}" for i in range(parties)) + ("dealer",)
    try:
        address = PartyAddress(rank, parties + 1, names)
        transport = open_transport(address, TransportOptions(name="gloo", master_port=port, timeout_s=60, connect_timeout_s=60))
    except BaseException as error:
        results.put((rank, "error", f"{error.__class__.__name__}: {error}"))
        raise
    try:
        if rank == parties:
            value = serve_tuples(transport, parties, (dealer_type or Dealer)(parties, authenticated, **(dealer_kwargs or {})))
        else:
            value = fn(transport, rank, parties, **(kwargs if authenticated else {**kwargs, "authenticated": False}))
        results.put((rank, "ok", value))
    except BaseException as error:
        results.put((rank, "error", f"{error.__class__.__name__}: {error}\n{traceback.format_exc()}"))
        raise SystemExit(1)
    finally:
        transport.close()


def spawn(fn: Callable, parties: int = 2, authenticated: bool = True, timeout_s: float = 240.0,
          dealer_type: Any = None, dealer_kwargs: dict | None = None,
          **kwargs: Any) -> tuple[dict[int, tuple[str, Any]], dict[int, int | None]]:
    """Run ``fn(transport, rank, parties, **kwargs)`` in each party; the dealer is the extra
    rank, serving ``dealer_type(parties, authenticated, **dealer_kwargs)`` (default: the
    production ``Dealer``; tests pass faulty ones). Returns
    ({rank: (status, value)}, {rank: exit code})."""
    context = party_context()
    results = context.Queue()
    port = free_port()
    processes = [start_party(context, _process, (fn, rank, parties, port, authenticated, kwargs, results,
                                                 dealer_type, dealer_kwargs), f"party{rank}", core_share(parties + 1))
                 for rank in range(parties + 1)]
    collected = collect_results(results, processes, timeout_s, join_s=30)
    return collected, {rank: p.exitcode for rank, p in enumerate(processes)}


def run_ok(fn: Callable, parties: int = 2, **kwargs: Any) -> list[Any]:
    """Like ``spawn`` but every process must succeed; the parties' values in rank order."""
    collected, codes = spawn(fn, parties, **kwargs)
    for rank in range(parties + 1):
        status, value = collected.get(rank, ("missing", "no result (timed out?)"))
        if status != "ok":
            raise AssertionError(f"rank {rank} failed: {value}")
    assert all(code == 0 for code in codes.values()), codes
    return [collected[rank][1] for rank in range(parties)]
