"""The ``ot`` suite's default triple source (``protocol.triple_source=ot_he``): OT, and BFV for large matrix products.

Every tuple is made as under ``ot`` (``protocols.ot``), except matrix products where BFV
(``protocols.he_matmul``) sends fewer bytes than Gilboa's 260 m k n and the product is large
enough that BFV's CPU per ciphertext pays: those triples' cross products come from two HE
messages each way per batch, sent in lockstep with the batch's OT extension messages.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from protocols.he_matmul import HeMatmul
from protocols.ot import OtTripleSource, matmul_u64, random_words, ring_tensor
from protocols.parts import UnsupportedTuple, metered
from protocols.registry import register_part

GILBOA_BYTES = 260  # per m k n, each way (protocols.ot)
# BFV takes a product when it sends under half Gilboa's bytes: it costs more CPU per byte saved
HE_SAVING = 2
# ... and has at least this many m k n: BFV costs ~0.08 CPU s per party for even one block per
# part, Gilboa ~0.4 us per m k n (W6's 512 x 64 x 1 products: 0.075-0.09 s against 0.014 s,
# for 2.8 MB sent against 8.6), so below 2^18 Gilboa's CPU saved outweighs its bytes
HE_MIN_PRODUCT = 1 << 18


def _matmul_shape(key: tuple) -> tuple[int, int, int] | None:
    """(m, k, n) of a matmul triple key whose left operand's rows (all but its last dimension)
    multiply one matrix; None for any other key."""
    if key[0] != "triple" or key[1] != "matmul" or key[4] or len(key[2]) < 2 or len(key[3]) != 2:
        return None
    return int(math.prod(key[2][:-1])), int(key[2][-1]), int(key[3][1])


@register_part("triple_source", "ot_he")
class OtHeTripleSource(OtTripleSource):
    """Two-party tuples without a dealer: OT extension, and BFV for large matrix products."""

    def __init__(self) -> None:
        super().__init__()
        self.he: Any = None

    def _started_he(self) -> HeMatmul:
        """BFV's keys (the peer's public keys swapped), made when the first product large enough
        for BFV comes: both parties reach it in the same batch (they produce the same keys), and a
        session without one (W5) never pays for them (3 key generations, ~0.35 s)."""
        if self.he is None:
            with metered(self.counters, "offline"):
                self.he = HeMatmul(self.comm, 1 - self.comm.get_rank())
        return self.he

    def _by_he(self, key: tuple) -> tuple[int, int, int] | None:
        """The key's (m, k, n) if BFV makes its triple with fewer bytes than Gilboa."""
        shape = _matmul_shape(key)
        if shape is None or math.prod(shape) < HE_MIN_PRODUCT:
            return None
        try:
            blocks = self._started_he().plan(*shape)
        except UnsupportedTuple:
            return None
        return shape if HE_SAVING * self.he.bytes_sent(blocks) < GILBOA_BYTES * math.prod(shape) else None

    def produce(self, keys: list[tuple]) -> list[list[torch.Tensor]]:
        """OT tuples as under ``ot``; the matmul triples BFV serves better from one HE batch,
        whose two messages each way travel in lockstep with the first OT extension run's (one
        wait for the peer per round, not two)."""
        shapes = [self._by_he(key) for key in keys]
        chosen = [(key, shape) for key, shape in zip(keys, shapes) if shape is not None]
        operands = [(random_words((m, k)), random_words((k, n))) for _, (m, k, n) in chosen]
        others, crosses = self._produce_beside([key for key, shape in zip(keys, shapes) if shape is None],
                                               self.he.cross_steps(operands) if operands else None)
        start = time.perf_counter()  # _produce_beside counted the runs' time
        others, crosses = iter(others), iter(crosses or ())
        made = iter([[ring_tensor(a, key[2]), ring_tensor(b, key[3]),
                      ring_tensor(matmul_u64(a, b) + next(crosses), (*key[2][:-1], key[3][1]))]
                     for (key, _), (a, b) in zip(chosen, operands)])
        self.seconds += time.perf_counter() - start
        return [next(others) if shape is None else next(made) for shape in shapes]

    def describe(self) -> str:
        return "ot_he (two-party: IKNP OT extension, Gilboa products; BFV (SEAL) matmul triples)"
