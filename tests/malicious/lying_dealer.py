"""Faulty dealers, for the tests. ``LyingDealer`` lies about one tuple kind at a time.

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

import numpy as np
import torch

from protocols.dealer import POSITION_BITS
from protocols.malicious import bilinear
from protocols.malicious.dealer import Dealer, answer_limbs, tuple_layout
from protocols.malicious.ring import U128
from protocols.prg import new_seed


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


class LyingCorrections(Dealer):
    """A dealer whose answers are inconsistent with the parties' seeds, one answer per entry
    of its ``plan`` (tuple kind, how), in order: the next answer holding a tuple of that
    kind is dealt honestly, then

    * ``correction``: one low limb of one party's corrections of that tuple (a value's or a
      MAC's) changes by an offset that is nonzero mod 2^64 (odd, times at most 2^7: the
      slack a value used times 2^64, a reveal's high mask, still leaves detectable);
    * ``seed``: one party's shares of the answer are made from another seed than the one
      it was greeted with (every value and MAC it draws disagrees with the dealer's);
    * ``position``: one party is told another keystream position than the one used.

    After the plan it is honest. Unlike ``LyingDealer`` its MACs are not consistent: only
    the shared values and MACs the parties end up with matter to the checks."""

    def __init__(self, parties: int, authenticated: bool = True, plan: Sequence[tuple[str, str]] = (),
                 seed: int = 0) -> None:
        super().__init__(parties, authenticated)
        self.plan = list(plan)
        self.rng = random.Random(seed)

    def deal(self, specs: Sequence[Sequence[Any]]) -> list[torch.Tensor]:
        if not self.plan or not any(spec[0] == self.plan[0][0] for spec in specs):
            return super().deal(specs)
        kind, how = self.plan.pop(0)
        victim = self.rng.randrange(self.parties)
        if how == "seed":
            greeted, self.seeds[victim] = self.seeds[victim], new_seed()
            try:
                return super().deal(specs)
            finally:
                self.seeds[victim] = greeted
        buffers = super().deal(specs)
        if how == "position":
            limbs = buffers[victim].numpy().view(np.uint64)
            limbs[0] = (int(limbs[0]) + 1 + self.rng.randrange(1 << 20)) % (1 << POSITION_BITS)
            return buffers
        index = next(i for i, spec in enumerate(specs) if spec[0] == kind)
        candidates = [(rank, start, count) for rank in range(self.parties)
                      for start, count in self._low_limbs(specs, index, rank)]
        rank, start, count = self.rng.choice(candidates)
        limbs = buffers[rank].numpy().view(np.uint64)
        offset = (self.rng.getrandbits(64) | 1) << self.rng.randrange(8)
        at = start + self.rng.randrange(count)
        limbs[at:at + 1] += np.uint64(offset % (1 << 64))  # an array add wraps mod 2^64
        return buffers

    def _low_limbs(self, specs: Sequence[Sequence[Any]], index: int, rank: int) -> list[tuple[int, int]]:
        """(first limb, count) of each block of party ``rank``'s low limbs of tuple ``index``'s
        corrections in its answer to ``specs``."""
        start = answer_limbs(specs[:index], rank, self.parties, True)  # the position word and the tuples before
        blocks = []
        for shape, elements, derived in tuple_layout(specs[index], index, rank, self.parties, True):
            count = len(range(*elements.indices(int(np.prod(shape, dtype=np.int64)))))
            for _ in range(int(derived) + 1):  # a derived value's shares, then its MAC's: lo limbs, hi limbs
                if count:
                    blocks.append((start, count))
                start += 2 * count
        return blocks
