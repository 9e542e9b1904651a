"""The semi-honest dealer (``triple_source=dealer``): a separate process makes every
correlated tuple and sends each computing party only its own shares.

The dealer is rank ``num_parties`` of the transport (``parties.dealer``: its role, its
serving loop); the computing parties are ranks ``0..num_parties-1`` and run their MPC among
themselves. The dealer sees tuples in the clear but no data: it never receives a share of
anything secret. Both speak the one dealer wire protocol (``protocols.dealer_wire``); this
module holds what is particular to this dealer: its tuples (:class:`SemiHonestMaker`) and
the parties' triple source.

Flow: every party asks its provider for tuples in the same order (the MPC program is the
same everywhere). A party keeps a buffer of tuples; on a miss, all parties compute the same
prediction of what comes next (the keys that followed this key the last time it was asked
for, i.e. the rest of a training step) and ask the dealer for that whole batch, which
answers each party with one message. From the second repetition of a step on, the dealer
makes the next step's answer in the background while the parties compute, so a step
normally costs one round trip to the dealer and no waiting for generation.

A dealer that dies, stalls or sends anything but exactly the shares that were asked for
stops the run with a :class:`DealerError` naming the dealer.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import torch

from protocols.dealer_wire import DealerError, DealerLink
from protocols.parts import metered
from protocols.prg import CipherGenerator, new_seed
from protocols.registry import register_part
from protocols.truncation import pair_values
from protocols.tuples import KeyedTripleSource, Prefetcher, check_key, freeze, tuple_elements, tuple_layout

log = logging.getLogger("cotrain.dealer")


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


class SemiHonestMaker:
    """The dealer's tuples for ``triple_source=dealer``: keys as in ``protocols.tuples``,
    each party's shares of a request flattened into one int64 buffer in request order."""

    kind = "dealer"

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.rng = CipherGenerator(new_seed())

    def greeting(self) -> list[torch.Tensor]:
        return [torch.empty(0, dtype=torch.int64) for _ in range(self.parties)]

    def validate(self, items: Any) -> list[tuple]:
        if not isinstance(items, list):
            raise ValueError("a request is a list of tuple keys")
        return [check_key(key) for key in items]

    def deal(self, items: Sequence[tuple]) -> list[torch.Tensor]:
        per_party: list[list[torch.Tensor]] = [[] for _ in range(self.parties)]
        for key in items:
            for party, shares in enumerate(generate_tuple(key, self.parties, self.rng)):
                per_party[party].extend(share.reshape(-1) for share in shares)
        return [torch.cat(shares) if shares else torch.empty(0, dtype=torch.int64) for shares in per_party]


# -- the parties' side -------------------------------------------------------------------------
@register_part("triple_source", "dealer")
class DealerTripleSource(KeyedTripleSource):
    """Tuples from a dealer process (rank = number of parties)."""

    needs_dealer = True
    provider_name = "COTRAIN_DEALER"

    @staticmethod
    def make_dealer(parties: int) -> SemiHonestMaker:
        return SemiHonestMaker(parties)

    def __init__(self) -> None:
        super().__init__()
        self.link: DealerLink | None = None
        self.prefetcher = Prefetcher(self._request)
        self.failed = False  # after a DealerError there is no dealer to say goodbye to

    def start(self, crypten: Any) -> None:
        # the parties' world ends where the dealer's rank begins
        self.link = DealerLink(self.comm, self.comm.get_world_size())
        with metered(self.counters, "offline"):
            self.link.hello(SemiHonestMaker.kind)

    def stop(self, crypten: Any) -> None:
        if self.link is None or self.failed:
            return
        try:
            self.link.stop()
        except DealerError as error:  # the run is ending anyway; say why the dealer may linger
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
        if self.link is None:
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
        self.link.request(keys)
        payload = self.link.answer(len(keys), sum(tuple_elements(key) for key in keys))
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

