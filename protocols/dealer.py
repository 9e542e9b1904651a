"""A dealer party: a separate process that makes every correlated tuple and sends each
computing party only its own shares.

The dealer is rank ``num_parties`` of the transport; the computing parties are ranks
``0..num_parties-1`` and run their MPC among themselves (``parties.transport.group.PartyGroup``). The
dealer sees tuples in the clear but no data: it never receives a share of anything secret.

Seeds, not shares: at the start the dealer sends each party a PRG seed. In each batch one
party, in turn, is the correction party: every other party's share of each tuple is the next
draw of its seeded stream, which it expands itself, and only the correction party's shares
(the value minus the others') travel. The dealer sends 1/n of the tuple bytes it would send
as full shares, and each party receives 1/n of them.

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
from protocols.prg import SEED_BYTES, CipherGenerator, new_seed
from protocols.registry import register_part
from protocols.truncation import pair_values
from protocols.tuples import KeyedTripleSource, Prefetcher, check_key, freeze, tuple_elements, tuple_layout

log = logging.getLogger("cotrain.dealer")

class DealerError(RuntimeError):
    """The dealer failed, stopped answering, or sent something malformed."""


def _split(value: torch.Tensor, kind: str, streams: Sequence[CipherGenerator | None]) -> list[torch.Tensor]:
    """Shares of ``value``: each seeded party's from its own stream, the correction party's
    (the one whose stream is None) the value minus the others'."""
    shares = [None if stream is None else stream.ring(value.shape) for stream in streams]
    rest = value.clone()
    for share in shares:
        if share is not None:
            rest = rest - share if kind == "a" else rest ^ share
    return [rest if share is None else share for share in shares]


def count_wraps(shares: Sequence[torch.Tensor]) -> torch.Tensor:
    """How often the signed int64 running sum of ``shares`` overflows (+1 up, -1 down)."""
    total, wraps = shares[0], torch.zeros_like(shares[0])
    for share in shares[1:]:
        new = total + share
        wraps += ((total > 0) & (share > 0) & (new < 0)).long()
        wraps -= ((total < 0) & (share < 0) & (new >= 0)).long()
        total = new
    return wraps


def tuple_values(key: tuple, rng: CipherGenerator) -> list[tuple[str, torch.Tensor]]:
    """The plaintext components of one tuple, each with its sharing ('a' or 'b'); empty for
    ``wrap``, whose values depend on the parties' own random shares (drawn in :func:`deal`)."""
    kind = key[0]
    if kind == "triple":
        _, op, size0, size1, kwargs = key
        a, b = rng.ring(size0), rng.ring(size1)
        return [("a", a), ("a", b), ("a", getattr(torch, op)(a, b, **dict(kwargs)))]
    if kind == "square":
        r = rng.ring(key[1])
        return [("a", r), ("a", r * r)]
    if kind == "binary":
        a, b = rng.ring(key[1]), rng.ring(key[2])
        return [("b", a), ("b", b), ("b", a & b)]
    if kind == "b2a":
        r = rng.bits(key[1], 1)
        return [("a", r), ("b", r)]
    if kind == "trunc":
        return [("a", v) for v in pair_values(rng.ring(key[1]), key[2])]
    if kind == "wrap":
        return []
    raise ValueError(f"unknown tuple kind {kind!r}")


def deal(key: tuple, values: list[tuple[str, torch.Tensor]], rng: CipherGenerator,
         streams: Sequence[CipherGenerator | None]) -> list[list[torch.Tensor]]:
    """Every party's shares of one tuple, ``result[party][component]``. A party with a stream
    draws its shares from it, which it expands itself from the seed the dealer gave it
    (:func:`seeded_shares`); only the correction party's shares (stream None) travel."""
    if key[0] == "wrap":
        r = [rng.ring(key[1]) if stream is None else stream.ring(key[1]) for stream in streams]
        theta = _split(count_wraps(r), "a", streams)
        return [[r[p], theta[p]] for p in range(len(r))]
    split = [_split(value, sharing, streams) for sharing, value in values]
    return [[component[p] for component in split] for p in range(len(streams))]


def correction_party(batch: int, parties: int) -> int:
    """The party whose shares of batch ``batch`` travel: each in turn, so each receives 1/n."""
    return batch % parties


def seeded_shares(key: tuple, stream: CipherGenerator) -> list[torch.Tensor]:
    """A seeded party's shares of one tuple: the draws :func:`deal` made for it, in order."""
    return [stream.ring(shape) for _, shape in tuple_layout(key)]


def generate_tuple(key: tuple, rng: CipherGenerator,
                   streams: Sequence[CipherGenerator | None]) -> list[list[torch.Tensor]]:
    """Every party's shares of one fresh tuple (the dealer's two steps in one)."""
    return deal(key, tuple_values(key, rng), rng, streams)


class DealerServer:
    """The dealer process's loop: answer party 0's batch requests until told to stop."""

    def __init__(self, comm: Any, parties: int, pool_batches: int = 2) -> None:
        self.comm = comm
        self.parties = parties
        self.rng = CipherGenerator(new_seed())
        # one stream per party: the dealer sends each its seed once
        self.seeds = [new_seed() for _ in range(parties)]
        self.streams = [CipherGenerator(seed) for seed in self.seeds]
        self.pool: dict[tuple, collections.deque] = collections.defaultdict(collections.deque)
        self.pool_batches = pool_batches
        self.lock = threading.Condition()
        self.wanted: list[tuple] = []
        self.stopped = False
        self.stats = {"requests": 0, "tuples": 0, "elements": 0, "pregenerated": 0, "inline": 0,
                      "bytes_sent": 0, "generation_s": 0.0}
        self.worker = threading.Thread(target=self._pregenerate, name="dealer-pregenerate", daemon=True)

    def serve(self) -> dict:
        for party, seed in enumerate(self.seeds):
            self.comm.send_obj({"op": "seed", "seed": seed}, party)
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
        correction = correction_party(self.stats["requests"], self.parties)
        streams = [None if party == correction else stream for party, stream in enumerate(self.streams)]
        self.stats["requests"] += 1
        corrections: list[torch.Tensor] = []  # the correction party's shares; the others expand seeds
        for key in keys:
            with self.lock:
                values = self.pool[key].popleft() if self.pool[key] else None
            start = time.perf_counter()
            if values is None:
                values = tuple_values(key, self.rng)
                self.stats["inline"] += 1
            else:
                self.stats["pregenerated"] += 1
            # dealt in answer order, the order in which the seeded parties expand their streams
            item = deal(key, values, self.rng, streams)
            self.stats["generation_s"] += time.perf_counter() - start
            corrections.extend(share.reshape(-1) for share in item[correction])
            self.stats["tuples"] += 1
            self.stats["elements"] += tuple_elements(key)
        with self.lock:  # the same batch is the best guess for the next request
            self.wanted = keys
            self.lock.notify_all()
        for party in range(self.parties):
            payload = (torch.cat(corrections) if corrections and party == correction
                       else torch.empty(0, dtype=torch.long))
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
            values = tuple_values(key, rng)
            with self.lock:
                self.pool[key].append(values)
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
        self.stream = self._receive_seed()
        self.batches = 0  # batches received so far: says whose turn it is to take the corrections

    def _receive_seed(self) -> CipherGenerator:
        """The seed this party expands its shares of every tuple from (but those of the batches
        where it is the correction party)."""
        dealer = f"the dealer (rank {self.dealer})"
        try:
            message = self.comm.recv_obj(self.dealer)
        except Exception as error:
            self.failed = True
            raise DealerError(f"{dealer} failed before sending this party's seed: "
                              f"{error.__class__.__name__}: {error}") from None
        seed = message.get("seed") if isinstance(message, dict) and message.get("op") == "seed" else None
        if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
            self.failed = True
            raise DealerError(f"{dealer} sent a malformed seed message: expected {SEED_BYTES} bytes, "
                              f"got {type(seed).__name__ if seed is not None else str(message)[:100]}")
        return CipherGenerator(seed)

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
        seeded = correction_party(self.batches, self.dealer) != self.rank
        self.batches += 1
        expected = 0 if seeded else sum(tuple_elements(key) for key in keys)
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
        if seeded:
            return [seeded_shares(key, self.stream) for key in keys]
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
        return "dealer (a separate dealer process makes every tuple; all but one party expand theirs from a seed)"


def run_dealer_server(comm: Any, parties: int) -> dict:
    """The dealer process's work, given its transport: serve until party 0 says stop."""
    server = DealerServer(comm, parties)
    log.info("dealer serving %d parties", parties)
    stats = server.serve()
    log.info("dealer done: %s", stats)
    return stats
