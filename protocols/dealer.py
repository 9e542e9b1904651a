"""A dealer party: a separate process that makes every correlated tuple and sends each
computing party only its own shares.

The dealer is rank ``num_parties`` of the transport; the computing parties are ranks
``0..num_parties-1`` and run their MPC among themselves (``parties.transport.group.PartyGroup``). The
dealer sees tuples in the clear but no data: it never receives a share of anything secret.

Seeds, not shares: at the start the dealer sends each party a PRG seed, and each batch of
tuples is drawn from its own stretch of every party's keystream. A tuple's uniformly random
components (a triple's a and b, a truncation pair's r) are whatever the parties' draws add
up to; the others (c = a b, msb(r), ...) are drawn too, except at the batch's correction
party (each party in turn), which receives its shares of them from the dealer: the value
minus the others' draws. Only those corrections travel: one element of a triple's three.

Flow: every party asks its provider for tuples in the same order (the MPC program is the
same everywhere). A party keeps a buffer of tuples; on a miss, all parties compute the same
prediction of what comes next (the keys that followed this key the last time it was asked
for, i.e. the rest of a training step) and party 0 asks the dealer for that whole batch.
The dealer answers each party with one message. The dealer learns the batch the first time
(the first step is traced) and from then on a background thread deals the next batch
(the same keys, at the next stretch of the keystreams) before it is asked for, so a step normally costs one round trip to the dealer and no
waiting for generation.

A dealer that dies, stalls or sends anything but exactly the shares that were asked for
stops the run with a :class:`DealerError` naming the dealer.
"""

from __future__ import annotations

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


def count_wraps(shares: Sequence[torch.Tensor]) -> torch.Tensor:
    """How often the signed int64 running sum of ``shares`` overflows (+1 up, -1 down)."""
    total, wraps = shares[0], torch.zeros_like(shares[0])
    for share in shares[1:]:
        new = total + share
        wraps += ((total > 0) & (share > 0) & (new < 0)).long()
        wraps -= ((total < 0) & (share < 0) & (new >= 0)).long()
        total = new
    return wraps


# Per tuple kind, which components are uniformly random: every party's share of those comes
# from its own seeded stream and the value is what the shares add up to; the others follow
# from them, and only their corrections travel. (b2a's bit is not uniform as a word.)
RANDOM_COMPONENTS = {"triple": (True, True, False), "square": (True, False), "binary": (True, True, False),
                     "b2a": (False, False), "trunc": (True, False, False), "wrap": (True, False),
                     "signmask": (True, False)}
# each batch's shares come from its own stretch of every party's keystream: 2^40 bytes apart,
# so the dealer can make a predicted batch ahead of time (a batch never draws that much)
BATCH_STRIDE = 1 << 40
_FIRST_POSITION = 64  # past the draw CipherGenerator makes for its torch seed


def batch_stream(seed: bytes, batch: int) -> CipherGenerator:
    """A party's stream for batch ``batch``, at the same keystream position at the dealer and the party."""
    stream = CipherGenerator(seed)
    stream.stream.seek(_FIRST_POSITION + batch * BATCH_STRIDE)
    return stream


def correction_party(batch: int, parties: int) -> int:
    """The party whose corrections for batch ``batch`` travel: each in turn, so each receives 1/n."""
    return batch % parties


def _combine(shares: Sequence[torch.Tensor], sharing: str) -> torch.Tensor:
    total = shares[0].clone()
    for share in shares[1:]:
        total = total + share if sharing == "a" else total ^ share
    return total


def _derived(key: tuple, random: list[Any], rng: CipherGenerator) -> list[torch.Tensor | None]:
    """Every component's value given the random ones' (None where random; wrap's r is the
    list of the parties' own r)."""
    kind = key[0]
    if kind == "triple":
        _, op, _, _, kwargs = key
        return [None, None, getattr(torch, op)(random[0], random[1], **dict(kwargs))]
    if kind == "square":
        return [None, random[0] * random[0]]
    if kind == "binary":
        return [None, None, random[0] & random[1]]
    if kind == "b2a":
        r = rng.bits(key[1], 1)
        return [r, r.clone()]
    if kind == "trunc":
        return [None, *pair_values(random[0], key[2])[1:]]
    if kind == "wrap":
        return [None, count_wraps(random[0])]
    if kind == "signmask":
        return [None, -random[0]]
    raise ValueError(f"unknown tuple kind {kind!r}")


def deal(key: tuple, streams: Sequence[CipherGenerator], correction: int, rng: CipherGenerator) -> list[list[torch.Tensor]]:
    """Every party's shares of one tuple, ``result[party][component]``: each party's the next
    draws of its stream (:func:`expand`), except the correction party's shares of the
    components that are not random, which are the value minus the others' shares."""
    layout = tuple_layout(key)
    randoms = RANDOM_COMPONENTS[key[0]]
    shares: list[list[Any]] = [[stream.ring(shape) if randoms[j] or party != correction else None
                                for j, (_, shape) in enumerate(layout)] for party, stream in enumerate(streams)]
    random = [[shares[p][j] for p in range(len(streams))] if sharing == "r"
              else _combine([shares[p][j] for p in range(len(streams))], sharing) if randoms[j] else None
              for j, (sharing, _) in enumerate(layout)]
    for j, value in enumerate(_derived(key, random, rng)):
        if value is not None:
            others = [shares[p][j] for p in range(len(streams)) if p != correction]
            shares[correction][j] = _combine([value, *others], "b") if layout[j][0] == "b" else value - _combine(others, "a")
    return shares


def correction_elements(key: tuple) -> int:
    """Elements of one tuple the correction party receives."""
    return sum(math.prod(shape) for (_, shape), random in zip(tuple_layout(key), RANDOM_COMPONENTS[key[0]])
               if not random)


def expand(keys: Sequence[tuple], stream: CipherGenerator, payload: torch.Tensor | None) -> list[list[torch.Tensor]]:
    """A party's shares of a batch: the draws :func:`deal` made for it, in order; the
    correction party (``payload`` not None) takes the non-random components from the payload."""
    batch, offset = [], 0
    for key in keys:
        shares = []
        for (_, shape), random in zip(tuple_layout(key), RANDOM_COMPONENTS[key[0]]):
            if payload is None or random:
                shares.append(stream.ring(shape))
            else:
                count = math.prod(shape)
                shares.append(payload[offset: offset + count].reshape(shape))
                offset += count
        batch.append(shares)
    return batch


def deal_batch(keys: Sequence[tuple], seeds: Sequence[bytes], batch: int, rng: CipherGenerator) -> torch.Tensor:
    """The correction party's payload for batch ``batch``: its shares of every non-random component."""
    streams = [batch_stream(seed, batch) for seed in seeds]
    correction = correction_party(batch, len(seeds))
    payload: list[torch.Tensor] = []
    for key in keys:
        shares = deal(key, streams, correction, rng)[correction]
        payload.extend(share.reshape(-1) for share, random in zip(shares, RANDOM_COMPONENTS[key[0]]) if not random)
    return torch.cat(payload) if payload else torch.empty(0, dtype=torch.long)


class DealerServer:
    """The dealer process's loop: answer party 0's batch requests until told to stop."""

    def __init__(self, comm: Any, parties: int) -> None:
        self.comm = comm
        self.parties = parties
        self.rng = CipherGenerator(new_seed())
        self.seeds = [new_seed() for _ in range(parties)]  # one per party, sent to it once
        self.lock = threading.Condition()
        self.wanted: tuple[int, list[tuple]] | None = None  # the predicted next batch: its number and keys
        self.ready: tuple[int, list[tuple], torch.Tensor] | None = None  # ... and its payload, made ahead
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
        batch = self.stats["requests"]
        correction = correction_party(batch, self.parties)
        self.stats["requests"] += 1
        with self.lock:
            ready, self.ready = self.ready, None
        if ready is not None and ready[0] == batch and ready[1] == keys:
            payload = ready[2]
            self.stats["pregenerated"] += 1
        else:
            start = time.perf_counter()
            payload = deal_batch(keys, self.seeds, batch, self.rng)
            self.stats["generation_s"] += time.perf_counter() - start
            self.stats["inline"] += 1
        self.stats["tuples"] += len(keys)
        self.stats["elements"] += sum(tuple_elements(key) for key in keys)
        with self.lock:  # the same keys are the best guess for the next batch
            self.wanted = (batch + 1, keys)
            self.lock.notify_all()
        for party in range(self.parties):
            sent = payload if party == correction else torch.empty(0, dtype=torch.long)
            self.comm.send_obj({"keys": keys, "elements": int(sent.numel())}, party)
            if sent.numel():
                self.comm.send(sent, party)
            self.stats["bytes_sent"] += sent.numel() * 8

    def _pregenerate(self) -> None:
        rng = CipherGenerator(new_seed())
        while True:
            with self.lock:
                while not self.stopped and (self.wanted is None or self.ready is not None
                                            and self.ready[0] == self.wanted[0]):
                    self.lock.wait(0.5)
                if self.stopped:
                    return
                batch, keys = self.wanted
            start = time.perf_counter()
            payload = deal_batch(keys, self.seeds, batch, rng)
            with self.lock:
                self.ready = (batch, keys, payload)
                self.stats["generation_s"] += time.perf_counter() - start


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
        self.seed = self._receive_seed()
        self.batches = 0  # batches received so far: says whose turn it is to take the corrections

    def _receive_seed(self) -> bytes:
        """The seed this party expands its shares of every tuple from (but the corrections of
        the batches where it is the correction party)."""
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
        return seed

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

    def sign_mask(self, size: Any, device: Any = None) -> tuple[Any, Any]:
        from crypten.mpc.primitives import ArithmeticSharedTensor as AST
        from crypten.mpc.primitives import BinarySharedTensor as BST

        key = ("signmask", freeze(size))
        self.counters.calls += 1
        self.counters.tuples += tuple_elements(key)
        r, negated = (s.to(device) if device is not None else s for s in self.fetch(key))
        return AST.from_shares(r, precision=0), BST.from_shares(negated)

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
        batch = self.batches
        self.batches += 1
        corrects = correction_party(batch, self.dealer) == self.rank
        expected = sum(correction_elements(key) for key in keys) if corrects else 0
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
        return expand(keys, batch_stream(self.seed, batch), payload if corrects else None)

    def describe(self) -> str:
        return "dealer (a separate dealer process makes every tuple; the parties expand their shares from seeds)"


def run_dealer_server(comm: Any, parties: int) -> dict:
    """The dealer process's work, given its transport: serve until party 0 says stop."""
    server = DealerServer(comm, parties)
    log.info("dealer serving %d parties", parties)
    stats = server.serve()
    log.info("dealer done: %s", stats)
    return stats
