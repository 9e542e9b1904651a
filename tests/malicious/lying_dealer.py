"""A faulty dealer, for the tests: it lies about one tuple kind at a time.

It deals like the production ``Dealer`` and keeps every MAC consistent with what it deals
(it knows alpha), so no MAC check can see its lies: only the checks of dealt tuples can.
Its ``plan`` is a list of (kind, count): it corrupts every tuple of the first kind it deals
until it has corrupted ``count`` of them, then moves to the next entry, from the next answer
on (one answer may hold several kinds, e.g. a product's triple and truncation pair; a lie
about the next kind in the answer that already failed would go unnoticed by the plan's
count); after the plan it is honest. With ``skip``, the first ``skip`` tuples of the plan's first kind are dealt
honestly (a lie in a later dealer answer). Each lie changes one element of one value by an offset that is nonzero mod 2^64:

* ``triple``, ``matmul``, ``bmatmul``, ``conv``: c (or, one time in four, the companion's c');
* ``trunc``, ``bits``: one random bit is no longer 0 or 1 (or, one time in four, the
  companion's c' is wrong);
* ``input``, ``private``: the mask the owner gets in clear (or, one time in three, its
  companion's clear value). The shared masks are what the parties' draws add up to (the
  dealer sends no share of them), so the clear copies are what it can lie about.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

import torch

from protocols.malicious import bilinear
from protocols.malicious.dealer import Dealer
from protocols.malicious.ring import U128


class LyingDealer(Dealer):
    def __init__(self, parties: int, authenticated: bool = True, plan: Sequence[tuple[str, int]] = (),
                 seed: int = 0, skip: int = 0) -> None:
        super().__init__(parties, authenticated)
        self.skip = skip
        self.plan = [list(step) for step in plan]
        self.rng = random.Random(seed)
        self.lying_about: str | None = None  # the plan's kind when the answer being dealt began

    def deal(self, specs: Sequence[Sequence[Any]]) -> list[torch.Tensor]:
        self.lying_about = self.plan[0][0] if self.plan else None
        return super().deal(specs)

    def tuple_values(self, spec: Sequence[Any], uniform: list[U128]) -> tuple[list[U128], list[U128]]:
        values, clear = super().tuple_values(spec, uniform)
        if not self.plan or spec[0] != self.plan[0][0] or spec[0] != self.lying_about:
            return values, clear
        if self.skip:
            self.skip -= 1
            return values, clear
        self.plan[0][1] -= 1
        if not self.plan[0][1]:
            self.plan.pop(0)
        return self._lie(spec[0], list(values), list(clear))

    def _offset(self) -> int:
        """Nonzero mod 2^64: small, large, odd, a high power of two, or anything."""
        choice = self.rng.randrange(5)
        if choice == 0:
            return self.rng.choice([1, 2, -1])
        if choice == 1:
            return 1 << self.rng.randrange(64)
        if choice == 2:
            return self.rng.getrandbits(64) | 1
        if choice == 3:
            return (self.rng.getrandbits(40) | 1) << self.rng.randrange(24)
        return (self.rng.getrandbits(64) or 3) + (self.rng.getrandbits(64) << 64)

    def _changed(self, value: U128, offset: int) -> U128:
        delta = [0] * value.size
        delta[self.rng.randrange(value.size)] = offset
        return value + U128.from_ints(delta, value.shape)

    def _lie(self, kind: str, values: list[U128], clear: list[U128]) -> tuple[list[U128], list[U128]]:
        if kind in bilinear.KINDS:
            index = 4 if self.rng.randrange(4) == 0 else 2
            values[index] = self._changed(values[index], self._offset())
        elif kind in ("trunc", "bits"):
            if self.rng.randrange(4) == 0:
                values[3] = self._changed(values[3], self._offset())
            else:  # a bit b becomes b + offset, which is not 0 or 1 mod 2^64
                offset = self._offset()
                while offset % (1 << 64) in (1, (1 << 64) - 1):
                    offset = self._offset()
                values[1] = self._changed(values[1], offset)
        else:  # input, private: the owner's copy of the mask or of its companion
            which = 1 if self.rng.randrange(3) == 0 else 0
            clear[which] = self._changed(clear[which], self._offset())
        return values, clear
