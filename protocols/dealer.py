"""A dealer party: a separate process that makes every correlated tuple and sends each
computing party only its own shares.

The dealer is rank ``num_parties`` of the transport; the computing parties are ranks
``0..num_parties-1`` and run their MPC among themselves (``parties.transport.group.PartyGroup``). The
dealer sees tuples in the clear but no data: it never receives a share of anything secret.

Flow: every party asks its provider for tuples in the same order (the MPC program is the
same everywhere). A party keeps a buffer of tuples; on a miss, all parties compute the same
prediction of what comes next (the keys that followed this key the last time it was asked
for, i.e. the rest of a training step) and party 0 asks the dealer for that whole batch.
The dealer answers each party with one message. The dealer learns the batch the first time
(the first step is traced) and from then on a background thread generates the next batch
before it is asked for, so a step normally costs one round trip to the dealer and no
waiting for generation.

A dealer that dies, stalls or sends anything but exactly the shares that were asked for
stops the run with a :class:`DealerError` naming the dealer.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from typing import Any, Sequence

import torch

from protocols.parts import metered
from protocols.prg import CipherGenerator, new_seed
from protocols.registry import register_part
from protocols.truncation import pair_values
from protocols.tuples import KeyedTripleSource, Prefetcher, check_key, freeze, tuple_elements, tuple_layout

log = logging.getLogger("cotrain.dealer")

class DealerError(RuntimeError):
    """The dealer failed, stopped answering, or sent something malformed."""


def _split(value: torch.Tensor, kind: str, parties: int, rng: CipherGenerator) -> list[torch.Tensor]:
    shares = [rng.ring(value.shape) for _ in range(parties - 1)]
    last = value.clone()
    for share in shares:
        last = last - share if kind == "a" else last ^ share
    return shares + [last]


def count_wraps(shares: Sequence[torch.Tensor]) -> torch.Tensor:
    """How often the signed int64 running sum of ``shares`` overflows (+1 up, -1 down)."""
    total, wraps = shares[0], torch.zeros_like(shares[0])
    for share in shares[1:]:
        new = total + share
        wraps += ((total > 0) & (share > 0) & (new < 0)).long()
        wraps -= ((total < 0) & (share < 0) & (new >= 0)).long()
        total = new
    return wraps


def generate_tuple(key: tuple, parties: int, rng: CipherGenerator) -> list[list[torch.Tensor]]:
    """Every party's shares of one tuple: ``result[party][component]``."""
    kind = key[0]
    if kind == "triple":
        _, op, size0, size1, kwargs = key
        a, b = rng.ring(size0), rng.ring(size1)
        values = [("a", a), ("a", b), ("a", getattr(torch, op)(a, b, **dict(kwargs)))]
    elif kind == "square":
        r = rng.ring(key[1])
        values = [("a", r), ("a", r * r)]
    elif kind == "binary":
        a, b = rng.ring(key[1]), rng.ring(key[2])
        values = [("b", a), ("b", b), ("b", a & b)]
    elif kind == "b2a":
        r = rng.bits(key[1], 1)
        values = [("a", r), ("b", r)]
    elif kind == "trunc":
        values = [("a", v) for v in pair_values(rng.ring(key[1]), key[2])]
    elif kind == "wrap":
        r = [rng.ring(key[1]) for _ in range(parties)]
        theta = _split(count_wraps(r), "a", parties, rng)
        return [[r[p], theta[p]] for p in range(parties)]
    else:
        raise ValueError(f"unknown tuple kind {kind!r}")
    split = [_split(value, sharing, parties, rng) for sharing, value in values]
    return [[component[p] for component in split] for p in range(parties)]


class DealerServer:
    """The dealer process's loop: answer party 0's batch requests until told to stop."""

    def __init__(self, comm: Any, parties: int, pool_batches: int = 2) -> None:
        self.comm = comm
        self.parties = parties
        self.rng = CipherGenerator(new_seed())
        self.pool: dict[tuple, collections.deque] = collections.defaultdict(collections.deque)
        self.pool_batches = pool_batches
        self.lock = threading.Condition()
        self.wanted: list[tuple] = []
        self.stopped = False
        self.stats = {"requests": 0, "tuples": 0, "elements": 0, "pregenerated": 0, "inline": 0,
                      "bytes_sent": 0, "generation_s": 0.0}
        self.worker = threading.Thread(target=self._pregenerate, name="dealer-pregenerate", daemon=True)

    def serve(self) -> dict:
        self.worker.start()
        try:
            while True:
                message = self.comm.recv_obj(0)
                if not isinstance(message, dict) or message.get("op") not in ("tuples", "stop"):
                    raise DealerError(f"party 0 sent the dealer a malformed message {message!r:.200}")
                if message["op"] == "stop":
                    return dict(self.stats)
                keys = [check_key(key) for key in message.get("keys", [])]
                self._answer(keys)
        finally:
            with self.lock:
                self.stopped = True
                self.lock.notify_all()
            self.worker.join(30)

    def _answer(self, keys: list[tuple]) -> None:
        self.stats["requests"] += 1
        per_party: list[list[torch.Tensor]] = [[] for _ in range(self.parties)]
        for key in keys:
            with self.lock:
                item = self.pool[key].popleft() if self.pool[key] else None
            if item is None:
                start = time.perf_counter()
                item = generate_tuple(key, self.parties, self.rng)
                self.stats["generation_s"] += time.perf_counter() - start
                self.stats["inline"] += 1
            else:
                self.stats["pregenerated"] += 1
            for party in range(self.parties):
                per_party[party].extend(share.reshape(-1) for share in item[party])
            self.stats["tuples"] += 1
            self.stats["elements"] += tuple_elements(key)
        with self.lock:  # the same batch is the best guess for the next request
            self.wanted = keys
            self.lock.notify_all()
        for party in range(self.parties):
            payload = torch.cat(per_party[party]) if per_party[party] else torch.empty(0, dtype=torch.long)
            self.comm.send_obj({"keys": keys, "elements": int(payload.numel())}, party)
            if payload.numel():
                self.comm.send(payload, party)
            self.stats["bytes_sent"] += payload.numel() * 8

    def _pregenerate(self) -> None:
        rng = CipherGenerator(new_seed())
        while True:
            with self.lock:
                while not self.stopped and self._next_missing() is None:
                    self.lock.wait(0.5)
                if self.stopped:
                    return
                key = self._next_missing()
            start = time.perf_counter()
            item = generate_tuple(key, self.parties, rng)
            with self.lock:
                self.pool[key].append(item)
                self.stats["generation_s"] += time.perf_counter() - start

    def _next_missing(self) -> tuple | None:
        """A key of the wanted batch with fewer pooled tuples than ``pool_batches`` batches need."""
        needed = collections.Counter(self.wanted)
        for key, count in needed.items():
            if len(self.pool[key]) < count * self.pool_batches:
                return key
        return None


# -- the parties' side -------------------------------------------------------------------------
@register_part("triple_source", "dealer")
class DealerTripleSource(KeyedTripleSource):
    """Tuples from a dealer process (rank = number of parties)."""

    needs_dealer = True
    provider_name = "COTRAIN_DEALER"

    @staticmethod
    def serve_dealer(comm: Any, parties: int) -> dict:
        return run_dealer_server(comm, parties)

    def __init__(self) -> None:
        super().__init__()
        self.comm: Any = None
        self.prefetcher = Prefetcher(self._request)
        self.failed = False  # after a DealerError there is no dealer to say goodbye to

    def start(self, crypten: Any) -> None:
        self.comm = crypten.communicator.get()
        self.dealer = self.comm.get_world_size()
        self.rank = self.comm.get_rank()

    def stop(self, crypten: Any) -> None:
        if self.comm is None or self.rank != 0 or self.failed:
            return
        try:
            self.comm.send_obj({"op": "stop"}, self.dealer)
        except Exception as error:  # the run is ending anyway; say why the dealer may linger
            log.warning("could not tell the dealer to stop: %s", error)

    def truncation_pair(self, size: Any, divisor: int, device: Any = None) -> tuple[Any, Any, Any]:
        from crypten.mpc.primitives import ArithmeticSharedTensor as AST

        key = ("trunc", freeze(size), int(divisor))
        self.counters.calls += 1
        self.counters.tuples += tuple_elements(key)
        shares = self.fetch(key)
        return tuple(AST.from_shares(s.to(device) if device is not None else s, precision=0) for s in shares)

    def fetch(self, key: tuple) -> list[torch.Tensor]:
        """This party's shares of the next tuple for ``key`` (batched by the prefetcher)."""
        if self.comm is None:
            raise DealerError("the dealer triple source was used before the secure session started")
        return self.prefetcher.fetch(key)

    def _request(self, keys: list[tuple]) -> list[list[torch.Tensor]]:
        try:
            with metered(self.counters, "offline"):
                return self._receive_batch(keys)
        except DealerError:
            self.failed = True
            raise

    def _receive_batch(self, keys: list[tuple]) -> list[list[torch.Tensor]]:
        dealer = f"the dealer (rank {self.dealer})"
        try:
            if self.rank == 0:
                self.comm.send_obj({"op": "tuples", "keys": keys}, self.dealer)
            header = self.comm.recv_obj(self.dealer)
        except Exception as error:
            raise DealerError(f"{dealer} failed or stopped answering: {error.__class__.__name__}: {error}") from None
        expected = sum(tuple_elements(key) for key in keys)
        if (not isinstance(header, dict) or freeze(header.get("keys")) != tuple(keys)
                or header.get("elements") != expected):
            raise DealerError(f"{dealer} sent a malformed batch: expected {len(keys)} tuples of "
                              f"{expected} elements, got {str(header)[:200]}")
        try:
            payload = (self.comm.recv(torch.empty(expected, dtype=torch.long), self.dealer) if expected
                       else torch.empty(0, dtype=torch.long))
        except Exception as error:
            raise DealerError(f"{dealer} failed while sending tuples: {error.__class__.__name__}: {error}") from None
        if payload.dtype != torch.long or payload.numel() != expected:
            raise DealerError(f"{dealer} sent {payload.numel()} {payload.dtype} elements; expected {expected} int64")
        batch, offset = [], 0
        for key in keys:
            shares = []
            for _, shape in tuple_layout(key):
                count = math.prod(shape)
                shares.append(payload[offset: offset + count].reshape(shape))
                offset += count
            batch.append(shares)
        return batch

    def describe(self) -> str:
        return "dealer (a separate dealer process makes every tuple)"


def run_dealer_server(comm: Any, parties: int) -> dict:
    """The dealer process's work, given its transport: serve until party 0 says stop."""
    server = DealerServer(comm, parties)
    log.info("dealer serving %d parties", parties)
    stats = server.serve()
    log.info("dealer done: %s", stats)
    return stats
