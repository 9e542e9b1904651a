"""A party that deviates from the protocol once, at a chosen step: ``TamperingEngine`` is
the production ``Engine`` with an ``Adversary`` acting on what it sends and receives.
Targets:

* ``mul``, ``matmul``, ``bmatmul``, ``conv``, ``trunc``, ``compare``, ``reveal``, ``verify``:
  alter this party's share in the n-th opening of that kind (the same altered share goes to
  every peer); ``mul`` includes the bit products inside a comparison, ``verify`` is the
  masked opening that checks shares kept rather than revealed;
* ``open``: alter this party's MAC-check opening after it committed to it;
* ``coins``: alter the seed this party opens in a coin toss (the MAC check's or the tuple
  check's), so that it no longer matches its commitment;
* ``tuple-check``: alter this party's share in an opening of the check of dealt tuples (a
  sacrifice's rho, a mask's combination, or a kind's combined sigma);
* ``input``: as an input owner, send a different masked input to one peer (equivocate);
  altering it consistently for every peer is input substitution, which no protocol can
  tell from an honest choice of input;
* ``tuple:triple``, ``tuple:matmul``, ``tuple:trunc``, ``tuple:bits``: alter this party's share (value
  share, or with ``mac=True`` the MAC share) of one value of the n-th tuple of that kind
  it receives from the dealer, and use it.

Every alteration adds an odd 64-bit offset to one element's low limb, so it changes the
value modulo 2^64 (a change confined to the high limb is harmless by design: only the low
64 bits of any value are ever used).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from protocols.malicious.engine import AShare, Engine

TARGETS = ("mul", "matmul", "bmatmul", "conv", "trunc", "compare", "reveal", "verify", "open", "coins", "tuple-check",
           "input", "tuple:triple", "tuple:matmul", "tuple:trunc", "tuple:bits")


@dataclass
class Adversary:
    target: str
    at: int = 0  # which event of that kind (0 = the first)
    seed: int = 0
    mac: bool = False  # tuple targets: alter the MAC share instead of the value share
    count: int = 0
    fired: bool = False
    log: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"unknown adversary target {self.target!r}; choose one of {TARGETS}")
        self.rng = random.Random(self.seed)

    def due(self, kind: str) -> bool:
        if kind != self.target or self.fired:
            return False
        due = self.count == self.at
        self.count += 1
        if due:
            self.fired = True
        return due

    def _offset(self) -> np.uint64:
        return np.uint64(self.rng.getrandbits(64) | 1)

    def alter_limbs(self, payload: np.ndarray) -> np.ndarray:
        """``payload`` is lo limbs then hi limbs: change one low limb."""
        altered = payload.copy()
        index = self.rng.randrange(max(1, payload.size // 2))
        altered[index:index + 1] += self._offset()
        return altered

    # -- hooks called by the engine ------------------------------------------------------------
    def alter(self, kind: str, payload: np.ndarray) -> np.ndarray:
        if not self.due(kind):
            return payload
        self.log.append((kind, self.count - 1))
        if kind == "open":  # a MAC-check opening: flip one bit of sigma (bytes 0..15)
            altered = payload.copy()
            altered[self.rng.randrange(2)] ^= np.uint64(1 << self.rng.randrange(64))
            return altered
        return self.alter_limbs(payload)

    def tuple_received(self, kind: str, values: list[Any]) -> list[Any]:
        if not self.due(f"tuple:{kind}"):
            return values
        which = self.rng.randrange(len(values))
        self.log.append((f"tuple:{kind}", self.count - 1, which, self.mac))
        share = values[which]
        limbs = share.m if self.mac and share.m is not None else share.v
        delta = np.zeros(limbs.lo.size, np.uint64)
        delta[self.rng.randrange(delta.size)] = self._offset()
        limbs.lo += delta.reshape(limbs.lo.shape)
        return values


class _EquivocatingTransport:
    """The engine's transport, except that one send to ``target`` carries altered limbs."""

    def __init__(self, transport: Any, adversary: Adversary) -> None:
        self._transport = transport
        self._adversary = adversary
        self.target: int | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def isend(self, tensor: torch.Tensor, dst: int) -> Any:
        if dst == self.target:
            self.target = None
            limbs = self._adversary.alter_limbs(tensor.numpy().view(np.uint64))
            tensor = torch.from_numpy(limbs.view(np.int64))
        return self._transport.isend(tensor, dst)


class TamperingEngine(Engine):
    """An ``Engine`` whose ``adversary`` (None: honest) alters this party's messages and
    the tuples it receives."""

    adversary: Adversary | None = None

    def _exchange(self, payload: Any, size: int, kind: str, record: bool = True) -> dict[int, np.ndarray]:
        if self.adversary is not None and not isinstance(payload, dict):
            payload = self.adversary.alter(kind, payload)
        return super()._exchange(payload, size, kind, record)

    def _receive(self, specs: list) -> list:
        entries = super()._receive(specs)
        if self.adversary is None:
            return entries
        return [(spec, self.adversary.tuple_received(spec[0], values), clear) for spec, values, clear in entries]

    def input(self, values: np.ndarray | None, shape: Sequence[int], owner: int) -> AShare:
        if self.adversary is None or self.rank != owner or not self.adversary.due("input"):
            return super().input(values, shape, owner)
        self.adversary.log.append(("input", self.adversary.count - 1))
        transport = self.comm
        self.comm = _EquivocatingTransport(transport, self.adversary)
        self.comm.target = self.others[-1]  # the last peer gets another masked input
        try:
            return super().input(values, shape, owner)
        finally:
            self.comm = transport
