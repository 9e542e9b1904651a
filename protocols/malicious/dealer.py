"""The trusted dealer of authenticated preprocessing, and the wire format of its tuples.

The dealer is a separate process (rank ``parties`` of the transport). It draws the global
MAC key alpha in [0, 2^64) and hands each party an additive share of it mod 2^128; it
never sees a party's data or any share of one. On request it makes, in clear, each tuple
the program needs and sends every party its additive shares of the values and of their
MACs (alpha * value mod 2^128):

* ``triple``  (shape):       a, b uniform in Z_2^128, c = a*b.
* ``matmul``  (n, d, m):     A (n x d), B (d x m) uniform, C = A @ B.
* ``trunc``   (shape):       r uniform in Z_2^128, with R = (r mod 2^63) >> f and the bit
                             b = bit 63 of r authenticated on their own (see ``engine.trunc``).
* ``input``   (shape, owner): r uniform; the owner also gets r in clear (input masks).
* ``private`` (shape, owner): the same, used to reveal a value to ``owner`` only.
* ``mask``    (shape):       2^64 * t, t uniform in Z_2^64: hides the high limb of a value
                             revealed to all.
* ``random``  (shape):       r uniform in Z_2^128, known to nobody (to verify shares).
* ``bits``    (shape, l):    r uniform in Z_2^128 and its low l bits, each an authenticated
                             0/1 value (shape + (l,)): edaBit-style masks for comparisons.

Every party sends the same request (the program is the same everywhere); the dealer
refuses to answer requests that differ, naming the parties, so a party cannot steer
another's preprocessing.

The sacrifice (SPDZ2k, guarding against a faulty dealer): in the authenticated mode every
``triple`` and ``matmul`` tuple comes with a companion sharing its b: (a, b, c) and
(a', b, c') with a' uniform and c' = a' * b (resp. A' @ B), all authenticated. The parties
draw a public t uniform in [0, 2^64) from the engine's commit-then-reveal coin toss (after
the tuples are fixed), open rho = t*a - a' (uniform, so a stays hidden) and then
sigma = t*c - c' - rho*b, and require sigma = 0 mod 2^128 (see ``Engine._sacrifice``).
Both openings are recorded for the batched MAC check, which runs before any value is
revealed, so a party cannot hide a dealer error by altering its share of sigma. If the
dealer's c is off by e (nonzero mod 2^64, valuation v < 64) and c' by e', then
sigma = t*e - e' mod 2^128, which is zero for at most one t mod 2^(128-v), i.e. for at most
one of the 2^64 choices of t: the check misses with probability at most 2^-64 per batch
(SPDZ2k's bound for s = 64 is 2^(-s + log2 s); ours is this or better because t is drawn
after the dealer committed to its tuples and the modulus is 2^(k+s) = 2^128). Errors
confined to the high limb are harmless by design (only values mod 2^64 are used). A party
altering its own *share* of a tuple changes the value without the matching MAC change (that
needs alpha) and is caught by the MAC check, exactly like an altered opening. One batch
(one dealer answer) costs one coin toss, two openings and a one-byte verdict round
(4 small rounds), the companion values and the local products t*c, rho*b.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Sequence

import numpy as np
import torch

from protocols.malicious import ring
from protocols.malicious.ring import U128

log = logging.getLogger("cotrain.malicious.dealer")

FRACTIONAL_BITS = 16
KINDS = ("triple", "matmul", "trunc", "input", "private", "mask", "bits", "random")
MAX_ELEMENTS = 1 << 26


class DealerProtocolError(RuntimeError):
    """A request to the dealer was malformed or the parties' requests differed."""


SACRIFICED = ("triple", "matmul")


def spec_shapes(spec: Sequence[Any], sacrifice: bool = False) -> list[tuple[int, ...]]:
    """The shapes of the authenticated values one tuple carries, in wire order (with
    ``sacrifice``, a triple is followed by its companion's a' and c')."""
    kind = spec[0]
    if kind == "triple":
        shape = tuple(spec[1])
        return [shape] * (5 if sacrifice else 3)
    if kind == "matmul":
        n, d, m = (int(v) for v in spec[1:4])
        return [(n, d), (d, m), (n, m)] + ([(n, d), (n, m)] if sacrifice else [])
    if kind == "trunc":
        shape = tuple(spec[1])
        return [shape, shape, shape]
    if kind in ("input", "private", "mask", "random"):
        return [tuple(spec[1])]
    if kind == "bits":
        shape = tuple(spec[1])
        return [shape, shape + (int(spec[2]),)]
    raise DealerProtocolError(f"unknown tuple kind {kind!r}")


def clear_owner(spec: Sequence[Any]) -> int | None:
    return int(spec[2]) if spec[0] in ("input", "private") else None


def validate(specs: Any) -> list[list[Any]]:
    if not isinstance(specs, list):
        raise DealerProtocolError("a request must be a list of tuple specs")
    total = 0
    for spec in specs:
        if not isinstance(spec, list) or not spec or spec[0] not in KINDS:
            raise DealerProtocolError(f"bad tuple spec {spec!r}")
        for shape in spec_shapes(spec):
            if not all(isinstance(s, int) and 0 <= s for s in shape):
                raise DealerProtocolError(f"bad shape in {spec!r}")
            total += int(np.prod(shape, dtype=np.int64))
    if total > MAX_ELEMENTS:
        raise DealerProtocolError(f"request for {total} elements is over the limit {MAX_ELEMENTS}")
    return specs


def _clear_values(spec: Sequence[Any], sacrifice: bool = False) -> list[U128]:
    kind = spec[0]
    shapes = spec_shapes(spec)
    if kind in SACRIFICED:
        product = (lambda x, y: x * y) if kind == "triple" else ring.matmul
        a, b = U128.random(shapes[0]), U128.random(shapes[1])
        values = [a, b, product(a, b)]
        if sacrifice:
            companion = U128.random(shapes[0])
            values += [companion, product(companion, b)]
        return values
    if kind == "trunc":
        r = U128.random(shapes[0])
        low63 = r.lo & np.uint64((1 << 63) - 1)
        top = U128.from_uint64(r.lo >> np.uint64(63))
        return [r, U128.from_uint64(low63 >> np.uint64(FRACTIONAL_BITS)), top]
    if kind in ("input", "private", "random"):
        return [U128.random(shapes[0])]
    if kind == "mask":
        t = U128.random(shapes[0])
        return [U128(np.zeros_like(t.lo), t.lo)]
    if kind == "bits":
        r = U128.random(shapes[0])
        if not 1 <= shapes[1][-1] <= 64:
            raise DealerProtocolError(f"bits: 1..64 bits, not {shapes[1][-1]}")
        positions = np.arange(shapes[1][-1], dtype=np.uint64)
        return [r, U128.from_uint64((r.lo[..., None] >> positions) & np.uint64(1))]
    raise DealerProtocolError(f"unknown tuple kind {kind!r}")


def share(value: U128, parties: int) -> list[U128]:
    shares = [U128.random(value.shape) for _ in range(parties - 1)]
    last = value
    for piece in shares:
        last = last - piece
    return shares + [last]


def deal(specs: Sequence[Sequence[Any]], alpha: U128, parties: int, authenticated: bool,
         sacrifice: bool = False, corrupt: tuple[int, int, int] | None = None) -> list[np.ndarray]:
    """Each party's wire buffer for ``specs``: per value its share, then its MAC share
    (if authenticated), then the clear value for the owner of an input/private mask.
    Unauthenticated (semi-honest) tuples travel as their low 64 bits only.

    ``corrupt`` is a TEST-ONLY fault, (spec index, element, offset): that triple's or
    matmul triple's c is made c + offset at that element (with a MAC consistent with the
    wrong c), as a faulty dealer would; only the sacrifice can catch it."""
    buffers: list[list[np.ndarray]] = [[] for _ in range(parties)]
    limbs = 2 if authenticated else 1  # semi-honest: values mod 2^64 suffice
    for index, spec in enumerate(specs):
        values = _clear_values(spec, sacrifice)
        if corrupt is not None and corrupt[0] == index:
            c = values[2]
            element = corrupt[1] % max(1, c.size)
            delta = np.zeros(c.size, dtype=object)
            delta[element] = corrupt[2]
            values[2] = c + U128.from_ints([int(x) for x in delta], c.shape)
        for value in values:
            for rank, piece in enumerate(share(value, parties)):
                buffers[rank].append(ring.to_wire(piece, limbs))
            if authenticated:
                for rank, piece in enumerate(share(value * alpha, parties)):
                    buffers[rank].append(ring.to_wire(piece))
        owner = clear_owner(spec)
        if owner is not None:
            if not 0 <= owner < parties:
                raise DealerProtocolError(f"owner {owner} is not a party")
            buffers[owner].append(ring.to_wire(values[0], limbs))
    return [np.concatenate(parts) if parts else np.zeros(0, np.uint64) for parts in buffers]


def send_array(comm: Any, array: np.ndarray, dst: int) -> None:
    comm.send(torch.tensor([array.size], dtype=torch.int64), dst)
    if array.size:
        comm.send(torch.from_numpy(np.ascontiguousarray(array).view(np.int64)), dst)


def recv_array(comm: Any, src: int, expected: int | None = None) -> np.ndarray:
    size = int(comm.recv(torch.empty(1, dtype=torch.int64), src).item())
    if expected is not None and size != expected:
        raise DealerProtocolError(f"{comm.peer(src)} sent {size} limbs where {expected} were expected")
    if size < 0 or size > 8 * MAX_ELEMENTS:
        raise DealerProtocolError(f"{comm.peer(src)} announced {size} limbs")
    if not size:
        return np.zeros(0, np.uint64)
    return comm.recv(torch.empty(size, dtype=torch.int64), src).numpy().view(np.uint64)


def run_dealer(comm: Any, parties: int, authenticated: bool = True, sacrifice: bool | None = None,
               fault: dict | None = None) -> dict:
    """Serve tuples until every party says stop. Returns counts for the dealer's report.

    ``sacrifice`` (default: on when authenticated) deals each triple and matmul triple
    with its companion for the parties' sacrifice check. ``fault`` is TEST-ONLY (a faulty
    dealer): ``{"corrupt": {n: offset, ...}, "seed": s}`` makes the n-th triple-kind tuple
    served (counting from 0, triples and matmul triples together) carry c + offset at a
    seeded random element."""
    sacrifice = authenticated if sacrifice is None else bool(sacrifice) and authenticated
    alpha = U128.from_uint64(np.frombuffer(os.urandom(8), dtype=np.uint64).copy())  # in [0, 2^64)
    for rank, piece in enumerate(share(alpha, parties)):  # plus the modes, so parties can refuse a mismatch
        send_array(comm, np.concatenate([ring.to_wire(piece),
                                         np.array([int(authenticated), int(sacrifice)], np.uint64)]), rank)
    served = {"requests": 0, "tuples": 0, "prefetched": 0, "corrupted": 0}
    faults = {int(n): int(o) for n, o in (fault or {}).get("corrupt", {}).items()}
    fault_rng = np.random.default_rng((fault or {}).get("seed", 0))
    triples_served = 0
    ahead: dict[str, Any] = {}  # the next answer to the request just served, made in the background

    def prepare(specs: list) -> None:
        ahead["specs"], ahead["buffers"] = specs, None

        def work() -> None:
            ahead["buffers"] = deal(specs, alpha, parties, authenticated, sacrifice)

        ahead["thread"] = threading.Thread(target=work, daemon=True)
        ahead["thread"].start()

    while True:
        requests = [comm.recv_obj(rank) for rank in range(parties)]
        if all(r.get("stop") for r in requests):
            break
        if any(r.get("stop") for r in requests):
            stopped = [rank for rank, r in enumerate(requests) if r.get("stop")]
            log.error("parties %s stopped while others asked for tuples", stopped)
            break
        reference = requests[0].get("specs")
        differing = [rank for rank, r in enumerate(requests) if r.get("specs") != reference]
        try:
            if differing:
                raise DealerProtocolError(f"the parties' tuple requests differ (parties {differing} "
                                          "disagree with party 0); refusing to deal")
            specs = validate(reference)
            buffers = None
            if ahead.get("specs") == specs:  # a training step asks for the same tuples each time
                ahead["thread"].join()
                buffers = ahead["buffers"]
                served["prefetched"] += buffers is not None
            if buffers is None:
                buffers = deal(specs, alpha, parties, authenticated, sacrifice)
            if faults:  # TEST-ONLY: re-deal this answer with one wrong c
                kinds = [i for i, spec in enumerate(specs) if spec[0] in SACRIFICED]
                for position, index in enumerate(kinds):
                    if triples_served + position in faults:
                        offset = faults.pop(triples_served + position)
                        element = int(fault_rng.integers(0, 1 << 62))
                        buffers = deal(specs, alpha, parties, authenticated, sacrifice, (index, element, offset))
                        served["corrupted"] += 1
                        break
                triples_served += len(kinds)
        except DealerProtocolError as error:
            for rank in range(parties):
                comm.send_obj({"error": str(error)}, rank)
            raise
        for rank in range(parties):
            comm.send_obj({"ok": True}, rank)
            send_array(comm, buffers[rank], rank)
        served["requests"] += 1
        served["tuples"] += len(specs)
        if specs == ahead.get("last"):  # a repeating request: make the next answer now
            prepare(specs)  # fresh tuples (never reused), ready if the same request comes next
        ahead["last"] = specs
    return served
