"""SPDZ2k-style authenticated arithmetic: k = 64, s = 64, everything mod 2^128.

A secret ``x`` (a signed 64-bit fixed-point integer, 16 fractional bits, as in CrypTen) is
held as an :class:`AShare` by every party: an additive share of some ``x_hat`` with
``x_hat = x mod 2^64`` and an additive share of its MAC ``alpha * x_hat mod 2^128``, where
the key ``alpha`` in [0, 2^64) is additively shared by the dealer and known to no party.
The high 64 bits of ``x_hat`` are garbage the protocol never relies on; only ``x mod 2^64``
is protected (an error confined to the high limb changes nothing that is used).

* Linear operations update values and MACs locally (a public constant is added to party
  0's value share and, times the party's key share, to every MAC share).
* Multiplication and matrix products use dealer-made authenticated Beaver triples; the
  masked differences are opened in full (128 bits, uniform, so nothing leaks).
* Truncation by 16 bits opens ``x + 2^62 + r`` against a pair the parties build from 64
  checked random bits: r = sum 2^i b_i + 2^64 u, its shifted part (r mod 2^63) >> 16 and
  its bit 63; only the low 64 bits of the opening are used, the carry out of bit 62 is
  recovered exactly from bit 63 and the result is ``x >> 16`` or one more (probabilistic
  rounding, 1 ulp), with no rare large error and MACs consistent by linearity.
* Nothing the dealer deals is trusted (whenever MACs are on; see
  ``_check_tuples`` and the dealer's docstring): every dealt tuple is checked before any
  value it influenced is revealed or saved. The answers received since the last check are
  checked together (``_check_pending``) at the start of the next MAC check, which precedes
  every reveal and every check of kept shares, or once they hold ``check_buffer`` values. Triples (elementwise, matmul, batched matmul, convolution) and the
  random bits of truncation pairs and comparison masks are sacrificed against companions; input and private-reveal masks
  are checked by their owner against a companion mask. A failure raises
  ``CheatDetected`` naming the check and the tuple kind on every party.
* Every opened value is recorded. ``check()`` runs the batched MAC check: a public random
  linear combination (coins from a commit-then-reveal coin toss) of the opened values and
  of the MAC shares gives each party ``sigma_i = sum chi_j m_ij - alpha_i sum chi_j x_j``
  (plus a pairwise zero sharing so ``sigma_i`` reveals nothing). Parties hash-commit to
  ``sigma_i`` and to a digest of everything each peer sent them, then open; the check
  passes only if every commitment opens, every party received the same messages from
  every sender, and the ``sigma_i`` sum to zero mod 2^128. A final verdict round makes
  every party abort if any party saw a failure.
* ``reveal`` (to all, or to one party through a dealer mask known only to it) runs the
  check on everything opened so far, including the masked output, before the value is
  returned; nothing that depends on a tampered message is ever handed out.

Soundness: an error e (nonzero mod 2^64) in any opened value or tuple share survives the
check with probability at most about 2^-(64 - log2 65) over the key and the coins.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from protocols.dealer_wire import DealerError, DealerLink
from protocols.malicious import bilinear
from protocols.malicious import dealer as dealing
from protocols.malicious import ring
from protocols.malicious.answers import Piece, cut
from protocols.malicious.ring import U128
from protocols.prg import SEED_BYTES, CipherStream

log = logging.getLogger("cotrain.malicious")

FRACTIONAL_BITS = dealing.FRACTIONAL_BITS
SCALE = 1 << FRACTIONAL_BITS
COMPARE_BITS = 32  # comparisons need |x| < 2^31 in raw fixed point (|value| < 32768)
CHECK_BUFFER_ELEMENTS = 1 << 21  # run the MAC check once this many opened values are pending
_ON_DEMAND = object()  # the tag of answers asked for as the program needs them (not a planned block's)
PHASES = ("dealer", "online", "tuple check", "MAC check")  # where the engine's traffic goes

# per checked tuple kind: the check that guards it and what a failure means
_TUPLE_CHECKS = {
    "triple": ("triple sacrifice", "a Beaver triple from the dealer failed the sacrifice: its c is not a*b"),
    "matmul": ("triple sacrifice", "a matmul triple from the dealer failed the sacrifice: its C is not A @ B"),
    "bmatmul": ("triple sacrifice", "a batched matmul triple from the dealer failed the sacrifice: its C is not "
                                    "A @ B"),
    "conv": ("triple sacrifice", "a convolution triple from the dealer failed the sacrifice: its C is not "
                                 "conv(A, B)"),
    "trunc": ("bit sacrifice", "a truncation pair from the dealer failed the sacrifice: one of its random "
                               "bits is not 0 or 1 (or its companion is wrong)"),
    "bits": ("bit sacrifice", "a comparison mask from the dealer failed the sacrifice: one of its random "
                              "bits is not 0 or 1 (or its companion is wrong)"),
    "input": ("mask check", "an input mask from the dealer is wrong: the owner's clear value does not "
                            "match the shared one"),
    "private": ("mask check", "a private-reveal mask from the dealer is wrong: the owner's clear value does "
                              "not match the shared one"),
}
_CHECK_ORDER = list(_TUPLE_CHECKS.values())  # a verdict byte is 1 + the index of the failure


class CheatDetected(RuntimeError):
    """A malicious-security check failed: the run must stop and nothing may be revealed."""

    def __init__(self, check: str, detail: str, party: int | None = None) -> None:
        who = f"; blamed: party {party}" if party is not None else ""
        super().__init__(f"malicious-security check '{check}' failed: {detail}{who}. "
                         "Aborting: no value depending on it was revealed or saved.")
        self.check = check
        self.party = party


class PreprocessingError(RuntimeError):
    """The dealer's mode or the tuples are out of step with the program (a dealer that fails
    or frames its answers wrongly raises ``protocols.dealer_wire.DealerError``)."""


@dataclass
class AShare:
    """This party's share of an authenticated value: value share and MAC share (or None
    in the semi-honest mode)."""

    v: U128
    m: U128 | None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.v.shape

    def __getitem__(self, index: Any) -> "AShare":
        return AShare(self.v[index], None if self.m is None else self.m[index])

    @property
    def T(self) -> "AShare":
        return AShare(self.v.T, None if self.m is None else self.m.T)

    def reshape(self, *shape: int) -> "AShare":
        return AShare(self.v.reshape(*shape), None if self.m is None else self.m.reshape(*shape))

    def __add__(self, other: "AShare") -> "AShare":
        return AShare(self.v + other.v, None if self.m is None else self.m + other.m)

    def __sub__(self, other: "AShare") -> "AShare":
        return AShare(self.v - other.v, None if self.m is None else self.m - other.m)

    def __neg__(self) -> "AShare":
        return AShare(-self.v, None if self.m is None else -self.m)

    def sum(self, axis: int, keepdims: bool = False) -> "AShare":
        v = ring.sum_axis(self.v, axis)
        m = None if self.m is None else ring.sum_axis(self.m, axis)
        out = AShare(v, m)
        if keepdims:
            shape = list(self.shape)
            shape[axis] = 1
            out = out.reshape(*shape)
        return out


def cat(shares: Sequence[AShare], axis: int = 0) -> AShare:
    """Concatenate along ``axis``."""
    v = U128(np.concatenate([s.v.lo for s in shares], axis), np.concatenate([s.v.hi for s in shares], axis))
    if shares[0].m is None:
        return AShare(v, None)
    return AShare(v, U128(np.concatenate([s.m.lo for s in shares], axis), np.concatenate([s.m.hi for s in shares], axis)))


def split(flat: AShare, shapes: Sequence[tuple[int, ...]]) -> list[AShare]:
    """Cut a flat share into pieces of ``shapes``."""
    values = ring.split(flat.v, shapes)
    macs = ring.split(flat.m, shapes) if flat.m is not None else [None] * len(shapes)
    return [AShare(v, m) for v, m in zip(values, macs)]


def encode(values: np.ndarray) -> np.ndarray:
    """Float to signed 64-bit fixed point with 16 fractional bits."""
    return np.round(np.asarray(values, dtype=np.float64) * SCALE).astype(np.int64)


def decode(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).astype(np.float64) / SCALE


@dataclass
class EngineStats:
    rounds: int = 0
    opened_elements: int = 0
    checks: int = 0
    checked_elements: int = 0
    dealer_requests: int = 0
    dealer_seconds: float = 0.0
    check_seconds: float = 0.0
    tuple_checks: int = 0  # dealer answers checked
    checked_tuples: int = 0  # tuples checked (every kind but ``random``)
    tuple_check_seconds: float = 0.0
    opened_by_kind: dict = field(default_factory=dict)  # opened elements per kind of opening
    dealt_by_kind: dict = field(default_factory=dict)  # authenticated values received per tuple kind
    # per phase (``PHASES``): bytes sent and received, rounds (a dealer round trip is one)
    traffic: dict = field(default_factory=lambda: {phase: {"bytes": 0, "rounds": 0} for phase in PHASES})

    def as_dict(self) -> dict:
        return {**self.__dict__, "opened_by_kind": dict(self.opened_by_kind), "dealt_by_kind": dict(self.dealt_by_kind),
                "traffic": {phase: dict(counts) for phase, counts in self.traffic.items()}}


def _digest(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


def _as_tensor(data: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.require(data, np.uint64, ["C", "W"]).view(np.int64))


def _stream(seed: bytes, count: int) -> np.ndarray:
    """``count`` uint64 values expanded from ``seed`` (a hash output: its first 16 bytes key
    AES-128-CTR, several times faster than SHAKE-256 for the millions a check draws)."""
    return CipherStream(seed[:SEED_BYTES]).read(8 * count).view(np.uint64)


def _tree_products(width: int) -> list[int]:
    """Per level of ``Engine._less_than_public`` over ``width`` bits, its products per element."""
    counts = []
    while width > 1:
        counts.append(1 if width == 2 else 2 * (width // 2))
        width = (width + 1) // 2
    return counts


class Engine:
    """One party's side of the authenticated (or, with ``authenticated=False``,
    semi-honest) arithmetic. ``comm`` is a transport whose ranks ``0..parties-1`` are the
    computing parties and rank ``dealer`` the dealer process."""

    def __init__(self, comm: Any, parties: int, dealer: int, authenticated: bool = True,
                 check_buffer: int = CHECK_BUFFER_ELEMENTS, answer_elements: int = dealing.ANSWER_ELEMENTS) -> None:
        self.comm = comm
        self.rank = comm.get_rank()
        self.parties = parties
        self.dealer = DealerLink(comm, dealer)
        self.authenticated = authenticated
        self._limbs = 2 if authenticated else 1  # semi-honest: only values mod 2^64 travel
        self.check_buffer = check_buffer
        self.answer_elements = answer_elements
        self.others = [r for r in range(parties) if r != self.rank]
        self.stats = EngineStats()
        self._queue: deque = deque()
        self._unchecked: list = []  # dealt entries, with their companions, not yet checked
        self._unchecked_values = 0
        self._opened: list[tuple[U128, U128]] = []
        self._pending = 0
        self._check_count = 0
        self._senders = {r: hashlib.sha256() for r in range(parties)}
        self._closed = False
        self._plans: dict[Any, list[list[Piece]]] = {}  # key -> its block's answers
        self._answers: deque = deque()  # (tag, answer) due next, in order; tag: (plan key or _ON_DEMAND, index)
        self._demands = 0
        self._ahead: Any = None  # a planned block whose next run's first answer is to be asked for
        self._pieces: list = []  # checked pieces of a cut tuple whose last piece is still due
        self._outstanding: deque = deque()  # (tag, answer) requested from the dealer, not yet received
        self._prefetched: dict[Any, deque] = {}  # tag -> answers received ahead of use
        self._current_phase = "online"  # what the engine's traffic is charged to (``traffic``)
        self._recording: list | None = None
        self._tuple_check_count = 0
        self.check_tuples = authenticated  # dealt tuples are checked whenever MACs are
        self.alpha = self._receive_key()
        if authenticated:
            self._setup_check_randomness()

    @property
    def key_share(self) -> torch.Tensor:
        """This party's share of the MAC key as 2 int64 limbs (low, high), for its checkpoint."""
        return _as_tensor(ring.to_wire(self.alpha))

    # -- setup ------------------------------------------------------------------------------
    def _receive_key(self) -> U128:
        """This party's share of the MAC key; keeps its seed for the dealer's answers."""
        with self._phase("dealer"), self._wire():
            buffer = self.dealer.hello(dealing.Dealer.kind).numpy().view(np.uint64)
        if buffer.size != 5:
            raise PreprocessingError(f"the dealer's greeting has {buffer.size} limbs, not 5 (a key share, the mode "
                                     "and a seed)")
        if bool(buffer[2]) != self.authenticated:
            raise PreprocessingError(f"the dealer deals {'authenticated' if buffer[2] else 'unauthenticated'} "
                                     f"tuples but this party runs {'with' if self.authenticated else 'without'} MACs")
        self._dealer_seed = buffer[3:].tobytes()
        return ring.from_wire(buffer[:2], (1,))

    def _setup_check_randomness(self) -> None:
        """Commit to the first coin-toss seed; agree pairwise seeds for zero sharings."""
        self._seed = secrets.token_bytes(32)
        pair_seeds = {r: secrets.token_bytes(32) for r in self.others}
        payloads = {r: np.frombuffer(_digest(b"coin", self._seed) + pair_seeds[r], np.uint64) for r in self.others}
        received = self._exchange(payloads, 8, "setup", record=False)
        self._seed_commitments = {r: received[r][:4].tobytes() for r in self.others}
        # the lower rank's seed is the pair's seed
        self._pair_seeds = {r: (pair_seeds[r] if self.rank < r else received[r][4:].tobytes()) for r in self.others}

    # -- what the traffic is for ---------------------------------------------------------------
    @contextmanager
    def _phase(self, phase: str) -> Iterator[None]:
        """Charge the engine's traffic inside to ``phase`` (an inner phase takes its own)."""
        outer, self._current_phase = self._current_phase, phase
        try:
            yield
        finally:
            self._current_phase = outer

    @contextmanager
    def _wire(self, rounds: int = 1) -> Iterator[None]:
        """Charge the bytes the transport counts inside, and ``rounds``, to the current phase."""
        stats = self.comm.stats
        before = stats.bytes_sent + stats.bytes_received
        try:
            yield
        finally:
            counts = self.stats.traffic[self._current_phase]
            counts["bytes"] += stats.bytes_sent + stats.bytes_received - before
            counts["rounds"] += rounds

    # -- communication among the computing parties -------------------------------------------
    def _exchange(self, payload: np.ndarray | dict[int, np.ndarray], size: int, kind: str,
                  record: bool = True) -> dict[int, np.ndarray]:
        """Send a uint64 payload to every other party (the same one to each, unless a dict
        per recipient is given) and receive ``size`` limbs from each. One round."""
        self.stats.rounds += 1
        requests, buffers = [], {}
        with self._wire():
            for dst in self.others:
                data = payload[dst] if isinstance(payload, dict) else payload
                requests.append(self.comm.isend(_as_tensor(data), dst))
            for src in self.others:
                buffers[src] = torch.empty(size, dtype=torch.int64)
                requests.append(self.comm.irecv(buffers[src], src))
            for request in requests:
                request.wait()
        out = {src: buffer.numpy().view(np.uint64) for src, buffer in buffers.items()}
        if record and self.authenticated:
            for src, data in out.items():
                self._senders[src].update(kind.encode())
                self._senders[src].update(data)
        if not isinstance(payload, dict):
            out[self.rank] = payload
        return out

    def exchange_public(self, values: Sequence[int]) -> dict[int, list[int]]:
        """Every party's small list of public integers (metadata), in one round. Recorded,
        so a party that tells different peers different things fails the next check."""
        payload = np.asarray(values, dtype=np.int64).view(np.uint64)
        received = self._exchange(payload, payload.size, "public")
        return {r: [int(v) for v in data.view(np.int64)] for r, data in received.items()}

    def _exchange_bytes(self, data: bytes, kind: str) -> dict[int, bytes]:
        padded = data + b"\0" * (-len(data) % 8)
        received = self._exchange(np.frombuffer(padded, np.uint64).copy(), len(padded) // 8, kind, record=False)
        return {r: buf.tobytes()[:len(data)] for r, buf in received.items()}

    # -- preprocessing ---------------------------------------------------------------------------
    def preprocess(self, specs: Sequence[Sequence[Any]]) -> None:
        """Ask the dealer for the tuples ``specs`` (all parties ask for the same, in the
        same order); they come in answers of at most ``answer_elements`` dealt elements
        (``answers.cut``), queued for the batch check of dealt tuples (``_accept``), and are
        consumed in that order. The first answer is fetched now, the rest as the program
        reaches them."""
        specs = [list(s) for s in specs]
        if not specs:
            return
        for answer in cut(specs, self.answer_elements, self.check_tuples):
            self._demands += 1
            self._answers.append(((_ON_DEMAND, self._demands), answer))
        self._fetch()

    def _fetch(self) -> None:
        """Receive the next answer due (made ahead, or asked for now), ask for the one after
        it so the dealer makes it while this one is used, then queue this one's tuples."""
        tag, answer = self._answers.popleft()
        specs = [piece.wire for piece in answer]
        raw = self._prefetched[tag].popleft() if self._prefetched.get(tag) else None
        if raw is None and self._outstanding and self._outstanding[0][0] == tag:
            self._outstanding.popleft()
            raw = self._receive(specs)
        elif raw is None:
            self._drain()
            self._request(specs)
            raw = self._receive(specs)
        self._ask_ahead()
        self._accept(answer, raw)

    def _ask_ahead(self) -> None:
        """Request the next answer due, or the first of a planned block's next run, unless
        one is on its way already or was made ahead."""
        if self._outstanding:
            return
        if self._answers:
            tag, answer = self._answers[0]
        elif self._ahead is not None:
            tag, answer = (self._ahead, 0), self._plans[self._ahead][0]
            self._ahead = None
        else:
            return
        if not self._prefetched.get(tag):
            self._request([piece.wire for piece in answer])
            self._outstanding.append((tag, answer))

    def _accept(self, answer: list[Piece], entries: list) -> None:
        """Queue a dealer answer's tuples for use; pieces of a cut tuple wait until the last
        one arrives, then are joined into the tuple the program asked for. Their check waits
        for the next MAC check (the check's outcome depends on the tuples alone, never on
        data, and it runs before any value they influenced is revealed), unless the
        unchecked tuples have grown past ``check_buffer`` values, which bounds the companions
        kept in memory."""
        if self.check_tuples:
            self._unchecked.extend(entries)
            self._unchecked_values += sum(value.v.size for _, values, _ in entries for value in values)
        for piece, (spec, values, clear) in zip(answer, entries):
            values, clear = values[:dealing.USED[spec[0]]], None if clear is None else clear[:1]
            if piece.whole:
                self._queue.append((piece.spec, values, clear))
                continue
            self._pieces.append((values, clear))
            if piece.last:
                self._queue.append(self._join(piece.spec, self._pieces))
                self._pieces = []
        if self._unchecked_values >= self.check_buffer:
            self._check_pending()

    @staticmethod
    def _join(spec: list[Any], pieces: list) -> tuple[list[Any], list[AShare], list[U128] | None]:
        """A cut elementwise tuple from its pieces (each over a flat shape; a value's trailing
        axes, such as a tuple's random bits, are kept)."""
        shape = tuple(spec[1])
        values = [cat([values[i] for values, _ in pieces]) for i in range(len(pieces[0][0]))]
        values = [v.reshape(*shape, *v.shape[1:]) for v in values]
        clear = None
        if pieces[0][1] is not None:
            clear = [ring.concat([c[0] for _, c in pieces]).reshape(*shape)]
        return spec, values, clear

    def _request(self, specs: list) -> None:
        with self._phase("dealer"), self._wire():
            self.dealer.request(specs)

    def _drain(self) -> None:
        """Receive every answer still on its way (before any new request: the dealer answers
        in order, and a party must never send while an answer to it is pending). An answer
        for a planned block's next run is kept; one for discarded tuples (after an abort) is
        dropped."""
        while self._outstanding:
            tag, answer = self._outstanding.popleft()
            raw = self._receive([piece.wire for piece in answer])
            if tag[0] is not _ON_DEMAND:
                self._prefetched.setdefault(tag, deque()).append(raw)

    def _check_pending(self) -> None:
        """Check every dealt tuple received since the last check, in one batch."""
        entries, self._unchecked, self._unchecked_values = self._unchecked, [], 0
        self._check_tuples(entries)

    def _receive(self, specs: list) -> list:
        """A dealer answer's tuples, from this party's seed and its answer (``dealing.expand``)."""
        start = time.perf_counter()
        limbs = dealing.answer_limbs(specs, self.rank, self.parties, self.authenticated)
        with self._phase("dealer"), self._wire(rounds=0):
            buffer = self.dealer.answer(len(specs), limbs).numpy().view(np.uint64)
        try:
            expanded = dealing.expand(specs, self._dealer_seed, buffer, self.rank, self.parties, self.authenticated)
        except dealing.DealerProtocolError as error:
            raise DealerError(f"the dealer sent a malformed answer: {error}") from None
        entries = []
        for spec, values, clear in expanded:
            kind = spec[0]
            self.stats.dealt_by_kind[kind] = self.stats.dealt_by_kind.get(kind, 0) + sum(v.size for v, _ in values)
            entries.append((spec, [AShare(v, m) for v, m in values], clear))
        self.stats.dealer_requests += 1
        self.stats.dealer_seconds += time.perf_counter() - start
        return entries

    @contextmanager
    def planned(self, key: Any) -> Iterator[None]:
        """Run a block whose tuple needs are the same each time ``key`` recurs: the first
        time they are recorded (and fetched on demand); later they come as the answers
        ``answers.cut`` makes of them, each requested while the one before it is
        used, and the first answer of the block's next run is requested once this
        run's last one has arrived, so the dealer makes tuples while the parties compute
        (fresh tuples, each used once)."""
        plan = self._plans.get(key)
        if plan is not None:
            self._answers.extend(((key, index), answer) for index, answer in enumerate(plan))
            self._ahead = key
            self._fetch()
            yield
            return
        self._recording = []
        try:
            yield
            self._plans[key] = cut(self._recording, self.answer_elements, self.check_tuples)
        finally:
            self._recording = None

    def _next(self, spec: list[Any]) -> tuple[list[AShare], U128 | None]:
        """The next checked tuple, which must be ``spec``: its values, and at an input or
        private mask's owner the mask in clear."""
        if self._recording is not None:
            self._recording.append(spec)
        while not self._queue:
            if self._answers:
                self._fetch()
            else:
                self.preprocess([spec])
        got, values, clear = self._queue.popleft()
        if [got[0], *[tuple(x) if isinstance(x, (list, tuple)) else x for x in got[1:]]] != \
                [spec[0], *[tuple(x) if isinstance(x, (list, tuple)) else x for x in spec[1:]]]:
            raise PreprocessingError(f"preprocessing out of step: the program needs {spec}, the next tuple is {got}")
        return values, None if clear is None else clear[0]

    def _prefetch(self, specs: list[list[Any]]) -> None:
        """The tuples an operation is about to take, in one dealer request and one check,
        unless tuples are queued or due already (a planned block's, which include them)."""
        if not self._queue and not self._answers:
            self.preprocess(specs)

    def discard_preprocessing(self) -> None:
        """Drop queued tuples, the answers still due and those awaiting their check (after an
        abort, before starting over)."""
        self._queue.clear()
        self._answers.clear()
        self._pieces = []
        self._unchecked, self._unchecked_values = [], 0

    def close(self) -> None:
        """Tell the dealer this party is done."""
        if not self._closed:
            self._closed = True
            self._drain()  # answers to requests made ahead of use are received, then dropped
            self._prefetched.clear()
            self.dealer.stop()

    # -- linear operations ---------------------------------------------------------------------
    def add_public(self, x: AShare, c: U128) -> AShare:
        v = x.v + c if self.rank == 0 else x.v + U128.zeros(c.shape)
        m = None if x.m is None else x.m + self.alpha * c
        return AShare(v.broadcast_to(np.broadcast_shapes(x.shape, c.shape)),
                      None if m is None else m.broadcast_to(np.broadcast_shapes(x.shape, c.shape)))

    def mul_public(self, x: AShare, c: U128) -> AShare:
        return AShare(x.v * c, None if x.m is None else x.m * c)

    def mul_int(self, x: AShare, c: int | np.ndarray) -> AShare:
        return self.mul_public(x, U128.from_int64(np.atleast_1d(np.asarray(c, dtype=np.int64))))

    def mul_const(self, x: AShare, c: float | np.ndarray) -> AShare:
        """Times a public real constant (fixed point), then truncated."""
        return self.trunc(self.mul_int(x, encode(c)))

    def add_const(self, x: AShare, c: float | np.ndarray) -> AShare:
        return self.add_public(x, U128.from_int64(np.atleast_1d(encode(c))))

    def zeros(self, shape: Sequence[int]) -> AShare:
        return AShare(U128.zeros(shape), U128.zeros(shape) if self.authenticated else None)

    # -- openings --------------------------------------------------------------------------------
    def open(self, shares: Sequence[AShare], kind: str) -> list[U128]:
        """Open several values in one round; each is recorded for the next MAC check."""
        if self._pending >= self.check_buffer:  # bounds the openings a party keeps for the check
            self.check()
        flat_v = ring.concat([s.v for s in shares])
        wire = ring.to_wire(flat_v, self._limbs)
        received = self._exchange(wire, wire.size, kind)
        total = flat_v if self.authenticated else U128(flat_v.lo.copy(), np.zeros_like(flat_v.hi))
        for src in self.others:
            total = total + ring.from_wire(received[src], flat_v.shape, self._limbs)
        if self.authenticated:
            self._opened.append((total, ring.concat([s.m for s in shares])))
            self._pending += total.size
        self.stats.opened_elements += total.size
        self.stats.opened_by_kind[kind] = self.stats.opened_by_kind.get(kind, 0) + total.size
        return ring.split(total, [s.shape for s in shares])

    def maybe_check(self) -> None:
        if self._pending >= self.check_buffer:
            self.check()

    # -- input and output ---------------------------------------------------------------------------
    def input(self, values: np.ndarray | None, shape: Sequence[int], owner: int) -> AShare:
        """Party ``owner`` shares ``values`` (floats): it opens ``x - r`` for an authenticated
        random ``r`` whose clear value only it holds."""
        shape = tuple(shape)
        (mask,), clear = self._next(["input", shape, owner])
        count = self._limbs * int(np.prod(shape, dtype=np.int64))
        if self.rank == owner:
            if values is None or tuple(np.shape(values)) != shape:
                raise ValueError(f"party {owner} must input values of shape {shape}")
            epsilon = U128.from_int64(encode(values)) - clear
            wire = _as_tensor(ring.to_wire(epsilon, self._limbs))
            with self._wire():
                for request in [self.comm.isend(wire, dst) for dst in self.others]:
                    request.wait()
        self.stats.rounds += 1
        if self.rank != owner:
            buffer = torch.empty(count, dtype=torch.int64)
            with self._wire():
                self.comm.irecv(buffer, owner).wait()
            data = buffer.numpy().view(np.uint64)
            if self.authenticated:
                self._senders[owner].update(b"input")
                self._senders[owner].update(data)
            epsilon = ring.from_wire(data, shape, self._limbs)
        return self.add_public(mask, epsilon)

    def reveal(self, x: AShare, to: int | None = None) -> np.ndarray | None:
        """The value as floats, to every party (``to=None``) or to party ``to`` only, after a
        MAC check of everything opened so far."""
        if to is None:
            masked = x
            if self.authenticated:  # 2^64 u hides the high limb, which is not the value's
                (u,), _ = self._next(["random", x.shape])
                masked = x + self.mul_public(u, U128.scalar(1 << 64))
            (opened,) = self.open([masked], "reveal")
            self.check()
            return decode(opened.low_int64())
        (r,), clear = self._next(["private", x.shape, to])
        (opened,) = self.open([x - r], "reveal")
        self.check()
        if self.rank != to:
            return None
        return decode((opened + clear).low_int64())

    def verify(self, *shares: AShare, suspect: str | None = None) -> None:
        """MAC-check values that are kept as shares (never revealed): open each plus a
        uniform authenticated mask nobody knows, then run the check. Nothing leaks. With
        ``suspect`` (where the shares came from, e.g. files read back), what was opened
        before is checked on its own first, and a failure names the suspect."""
        if not self.authenticated:
            return
        if suspect is not None:
            self.check()
        masked = []
        for x in shares:
            (r,), _ = self._next(["random", x.shape])
            masked.append(x + r)
        self.open(masked, "verify")
        self.check(suspect)

    # -- multiplication ------------------------------------------------------------------------------
    def mul(self, x: AShare, y: AShare, truncate: bool = True) -> AShare:
        """Elementwise product (same shapes) with an authenticated Beaver triple."""
        return self.mul_many([(x, y)], truncate)[0]

    def mul_many(self, pairs: Sequence[tuple[AShare, AShare]], truncate: bool = True) -> list[AShare]:
        """Several independent elementwise products in one opening round (and one
        truncation round)."""
        for x, y in pairs:
            if x.shape != y.shape:
                raise ValueError(f"mul needs equal shapes, got {x.shape} and {y.shape}")
        x = cat([p[0].reshape(-1) for p in pairs])
        y = cat([p[1].reshape(-1) for p in pairs])
        if truncate:
            self._prefetch([["triple", x.shape], ["trunc", x.shape]])
        (a, b, c), _ = self._next(["triple", x.shape])
        d, e = self.open([x - a, y - b], "mul")
        z = c + self.mul_public(b, d) + self.mul_public(a, e)
        z = self.add_public(z, d * e)
        if truncate:
            z = self.trunc(z)
        return split(z, [p[0].shape for p in pairs])

    def trunc_many(self, values: Sequence[AShare]) -> list[AShare]:
        return split(self.trunc(cat([v.reshape(-1) for v in values])), [v.shape for v in values])

    def matmul(self, x: AShare, y: AShare, truncate: bool = True) -> AShare:
        (n, k), (k2, m) = x.shape, y.shape
        if k != k2:
            raise ValueError(f"matmul shapes {x.shape} and {y.shape} do not match")
        return self.bilinear(["matmul", n, k, m], x, y, truncate)

    def bilinear(self, spec: list[Any], x: AShare, y: AShare, truncate: bool = True) -> AShare:
        """f(x, y) for the bilinear map of a triple ``spec`` (``bilinear``: a matrix product,
        batched or not, or a convolution), with an authenticated triple of that kind."""
        if truncate:  # the triple and the product's truncation pair in one checked answer
            self._prefetch([spec, ["trunc", tuple(bilinear.shapes(spec)[2])]])
        (a, b, c), _ = self._next(spec)
        if x.shape != a.shape or y.shape != b.shape:
            raise ValueError(f"{spec[0]} operands of shapes {x.shape} and {y.shape} do not fit {spec}")
        d, e = self.open([x - a, y - b], spec[0])
        f = bilinear.product(spec)
        z = c + self._public_product(spec, d, b) + AShare(f(a.v, e), None if a.m is None else f(a.m, e))
        z = self.add_public(z, f(d, e))
        return self.trunc(z) if truncate else z

    @staticmethod
    def _public_product(spec: list[Any], public: U128, x: AShare) -> AShare:
        """f(public, x) for a shared x (local: f is linear in x)."""
        f = bilinear.product(spec)
        return AShare(f(public, x.v), None if x.m is None else f(public, x.m))

    def trunc(self, x: AShare, bits: int = FRACTIONAL_BITS) -> AShare:
        """Divide by 2^bits (probabilistic rounding, within 1 ulp) for |x| < 2^62; any
        ``bits`` in 1..62 when dealt bits are checked, 16 otherwise (the dealt pair's)."""
        if not 1 <= bits <= 62 or (bits != FRACTIONAL_BITS and not self.check_tuples):
            raise ValueError(f"cannot truncate by 2^{bits} (1..62 with checked tuples, else 16 only)")
        r, low, top = self._truncation_pair(x.shape, bits)
        shifted = self.add_public(x, U128.scalar(1 << 62))
        (c,) = self.open([shifted + r], "trunc")
        low64 = c.lo
        c63 = (low64 >> np.uint64(63)).astype(np.int64)
        c_rest = (low64 & np.uint64((1 << 63) - 1)) >> np.uint64(bits)
        # carry w = c63 xor top = c63 + (1 - 2 c63) * top;  y >> f = (c' >> f) + 2^(63-f) w - R
        public = U128.from_uint64(c_rest) + U128.from_int64(c63 << (63 - bits)) \
            - U128.scalar(1 << (62 - bits))
        sign = U128.from_int64((1 - 2 * c63) << (63 - bits))
        return self.add_public(self.mul_public(top, sign) - low, public)

    def _random_bits(self, kind: str, shape: tuple[int, ...], count: int) -> tuple[AShare, AShare]:
        """r uniform in Z_2^128 and its low ``count`` bits (shape + (count,)), made from a
        checked ``trunc`` or ``bits`` tuple: r = sum 2^i b_i + 2^count u."""
        spec = [kind, shape] if kind == "trunc" else [kind, shape, count]
        (u, bits), _ = self._next(spec)
        powers = U128.from_uint64(np.uint64(1) << np.arange(count, dtype=np.uint64))
        r = self.mul_public(bits, powers).sum(-1) + self.mul_public(u, U128.from_ints(1 << count))
        return r, bits

    def _truncation_pair(self, shape: tuple[int, ...], shift: int) -> tuple[AShare, AShare, AShare]:
        """r, (r mod 2^63) >> shift and bit 63 of r: from 64 checked random bits, or as dealt
        when nothing is checked (the semi-honest mode, shift 16)."""
        if not self.check_tuples:
            return tuple(self._next(["trunc", shape])[0])
        r, bits = self._random_bits("trunc", shape, dealing.TRUNC_BITS)
        powers = U128.from_uint64(np.uint64(1) << np.arange(63 - shift, dtype=np.uint64))
        low = self.mul_public(bits[..., shift:63], powers).sum(-1)
        return r, low, bits[..., 63]

    # -- comparison ----------------------------------------------------------------------------------
    def xor_public(self, x: AShare, c: np.ndarray) -> AShare:
        """[x xor c] for a shared bit x and public bits c: c + (1 - 2c) x."""
        c = np.asarray(c, dtype=np.int64)
        return self.add_public(self.mul_public(x, U128.from_int64(1 - 2 * c)), U128.from_int64(c))

    def ltz(self, x: AShare, bits: int = COMPARE_BITS) -> AShare:
        """[x < 0] as an integer 0/1 sharing, for |x| < 2^(bits-1) (raw fixed-point units;
        the default 32 bits allows |value| < 2^15).

        With an authenticated random r (low ``bits`` bits also shared bit by bit), open
        c = x + 2^(bits-1) + r; then y = x + 2^(bits-1) is in [0, 2^bits) and its top bit,
        [x >= 0], is c_top xor r_top xor [c mod 2^(bits-1) < r mod 2^(bits-1)] (the borrow,
        ``_less_than_public``): for 48 bits, 7 rounds and 92 bit products per element."""
        elements = int(np.prod(x.shape, dtype=np.int64))
        products = [elements * count for count in _tree_products(bits - 1)] + [elements]
        self._prefetch([["bits", x.shape, bits]] + [["triple", (count,)] for count in products])
        r, r_bits = self._random_bits("bits", x.shape, bits)
        (c,) = self.open([self.add_public(x, U128.scalar(1 << (bits - 1))) + r], "compare")
        positions = np.arange(bits, dtype=np.uint64)
        c_bits = ((c.lo[..., None] >> positions) & np.uint64(1)).astype(np.int64)
        low = bits - 1
        borrow = self._less_than_public(c_bits[..., :low], r_bits[..., :low])
        top = r_bits[..., low]
        (both,) = self.mul_many([(top, borrow)], truncate=False)
        top_xor_borrow = top + borrow - both - both
        nonnegative = self.xor_public(top_xor_borrow, c_bits[..., low])
        return self.add_public(-nonnegative, U128.scalar(1))

    def _less_than_public(self, c_bits: np.ndarray, r_bits: AShare) -> AShare:
        """[c < r] for public bits c and shared bits r (last axis, least significant first).

        Per bit, lt = [c_i < r_i] = (1 - c_i) r_i and eq = [c_i = r_i] = 1 - (c_i xor r_i) are
        linear. Adjacent segments, H above L, combine as lt = lt_H + eq_H lt_L (the two
        cases exclude each other) and eq = eq_H eq_L: one round of products per level, about
        2l products in ceil(log2 l) rounds for l bits (the last level needs no eq)."""
        lt = self.mul_public(r_bits, U128.from_int64(1 - c_bits))
        eq = self.add_public(-self.xor_public(r_bits, c_bits), U128.scalar(1))
        while lt.shape[-1] > 1:
            width = lt.shape[-1]
            pairs = width // 2
            lt_top, eq_top = lt[..., width - 1:], eq[..., width - 1:]
            low, high = slice(0, 2 * pairs, 2), slice(1, 2 * pairs, 2)
            if width == 2:
                (carried,) = self.mul_many([(eq[..., high], lt[..., low])], truncate=False)
                return (lt[..., high] + carried)[..., 0]
            carried, both_equal = self.mul_many([(eq[..., high], lt[..., low]), (eq[..., high], eq[..., low])],
                                                truncate=False)
            lt, eq = lt[..., high] + carried, both_equal
            if width % 2:  # the top segment has no partner at this level
                lt = cat([lt, lt_top], axis=-1)
                eq = cat([eq, eq_top], axis=-1)
        return lt[..., 0]

    def relu(self, x: AShare) -> tuple[AShare, AShare]:
        """(max(x, 0), [x >= 0]); the second is ReLU's derivative as a 0/1 sharing."""
        positive = self.add_public(-self.ltz(x), U128.scalar(1))
        (out,) = self.mul_many([(x, positive)], truncate=False)
        return out, positive

    # -- the MAC check ---------------------------------------------------------------------------------
    def check(self, suspect: str | None = None) -> None:
        """Batched MAC check of every value opened since the last one (4 rounds); a failure
        blames ``suspect`` where the caller knows where the values came from."""
        with self._phase("MAC check"):
            self._check_macs(suspect)

    def _check_macs(self, suspect: str | None) -> None:
        if not self.authenticated:
            return
        self._check_pending()  # first: its openings are MAC-checked here too
        start = time.perf_counter()
        self.stats.checks += 1
        self._check_count += 1
        failures: list[tuple[str, str, int | None]] = []

        # 1. coin toss: reveal this check's seed and commit to the next one
        coin = self._coin_toss(b"chi", self._check_count, failures)

        # 2. each party's share of the random linear combination of the MAC relations
        # shape (1,), not numpy scalars: their wrapping sums would warn of overflow
        combined_value = combined_mac = U128.zeros((1,))
        chi_stream = _stream(coin, self._pending)
        start_chi = 0
        for values, macs in self._opened:  # each opening with its stretch of the coefficients
            chi = U128.from_uint64(chi_stream[start_chi:start_chi + values.size])
            start_chi += values.size
            combined_value = combined_value + ring.sum_axis(values * chi, 0).reshape(1)
            combined_mac = combined_mac + ring.sum_axis(macs * chi, 0).reshape(1)
        sigma = combined_mac - self.alpha * combined_value + self._zero_share()
        digests = b"".join(self._senders[r].digest() for r in range(self.parties))
        nonce = secrets.token_bytes(16)
        opening = ring.to_wire(sigma).tobytes() + digests + nonce
        commitments = self._exchange_bytes(_digest(b"mac", opening), "commit")
        openings = self._exchange_bytes(opening, "open")

        # 3. verify: commitments, identical views of every sender, sigmas sum to zero
        total = U128.zeros((1,))
        for src in range(self.parties):
            body = openings[src]
            if src != self.rank and not hmac.compare_digest(_digest(b"mac", body), commitments[src]):
                failures.append(("MAC-check commitment", f"party {src} opened a value it did not commit to", src))
                continue
            total = total + ring.from_wire(np.frombuffer(body[:16], np.uint64), (1,))
            their = body[16:16 + 32 * self.parties]
            for sender in range(self.parties):
                if sender not in (src, self.rank) and their[32 * sender:32 * (sender + 1)] != digests[32 * sender:32 * (sender + 1)]:
                    failures.append(("broadcast consistency",
                                     f"party {src} and party {self.rank} received different messages "
                                     f"from party {sender} (it equivocated, or party {src} misreports)", sender))
        if not failures and total != U128.zeros((1,)):
            cause = suspect or "an opening, or a tuple used to compute one, was altered"
            failures.append(("MAC check", f"the MACs of the {self._pending} values opened since the last check "
                             f"do not match: {cause}", None))

        # 4. verdict: every party learns whether any party saw a failure
        verdict = b"\1" if failures else b"\0"
        verdicts = self._exchange_bytes(verdict, "verdict")
        self._opened.clear()
        self._senders = {r: hashlib.sha256() for r in range(self.parties)}
        self.stats.checked_elements += self._pending
        self._pending = 0
        self.stats.check_seconds += time.perf_counter() - start
        if failures:
            check, detail, party = failures[0]
            raise CheatDetected(check, detail, party)
        complaints = [src for src, v in verdicts.items() if v != b"\0"]
        if complaints:
            raise CheatDetected("verdict", f"party {complaints[0]} reported a failed check", None)

    def _coin_toss(self, label: bytes, counter: int, failures: list) -> bytes:
        """Commit-then-reveal coin toss (one round): every party reveals the seed it
        committed to last time and commits to its next one; the coin hashes all seeds.
        A seed that does not match its commitment is appended to ``failures``."""
        next_seed = secrets.token_bytes(32)
        message = self._seed + _digest(b"coin", next_seed)
        received = self._exchange_bytes(message, "coins")
        seeds = [b""] * self.parties
        seeds[self.rank] = self._seed
        for src in self.others:
            seed, commitment = received[src][:32], received[src][32:]
            if not hmac.compare_digest(_digest(b"coin", seed), self._seed_commitments[src]):
                failures.append(("coin-toss commitment", f"party {src} opened a seed it did not commit to", src))
            seeds[src] = seed
            self._seed_commitments[src] = commitment
        self._seed = next_seed
        return _digest(label, counter.to_bytes(8, "little"), *seeds)

    # -- the checks of dealt tuples ---------------------------------------------------------------------
    def _check_tuples(self, entries: list) -> None:
        """``_check_dealt``, its traffic charged to the tuple check."""
        with self._phase("tuple check"):
            self._check_dealt(entries)

    def _check_dealt(self, entries: list) -> None:
        """Check every tuple of ``entries`` (dealer answers' tuples with their companions;
        all but ``random``, which has no structure).

        A public t uniform in [0, 2^64) and coefficients chi (uniform in [0, 2^64)) come from
        one coin toss, drawn after the tuples were dealt. Then, in one opening round:

        * sacrificed kinds: rho = t*a - a' per element, for a triple (a, b, c) with its
          companion (a', b, c'), a triple of another bilinear map f (the same with A, B, C:
          matmul, batched matmul, convolution), and each dealt bit b taken as the triple
          (b, b, b). Then sigma = t*c - c' - f(rho, b) is zero
          for honest tuples; per kind, the parties open one random combination
          sum chi_j sigma_j and require 0 mod 2^128.
        * input and private masks: one opening of sum_k chi_k r_k + s per mask (s its
          companion, uniform, so the r_k stay hidden); the owner compares it with the same
          combination of the clear values it got.

        A one-byte verdict round then names the first failed kind to every party, so every
        party raises ``CheatDetected`` naming the check and the tuple kind; it runs before any
        value the tuples influenced is revealed or saved (``_accept``).

        Soundness against a faulty dealer: a triple whose c is off by e (nonzero mod 2^64)
        and c' by e' gives sigma = t*e - e', zero mod 2^128 for at most one t in [0, 2^64);
        a dealt "bit" b that is not 0 or 1 mod 2^64 has b*b - b nonzero mod 2^64 (one of b,
        b - 1 is odd), so it fails the same way. A nonzero sigma of 2-adic valuation w
        survives the combination with probability at most 2^-(128-w) (<= 2^-64 for
        w <= 64), and w = 64 + j needs t to hit a class of probability <= 2^-(1+j): in all
        a wrong tuple passes with probability below 2^-58. A wrong clear mask (off by a
        nonzero value mod 2^64) passes the owner's comparison for at most one chi_k in
        [0, 2^64): 2^-64. Every opening here is recorded for the batched MAC check that runs
        before any value is revealed, so a party cannot hide a dealer's error by altering
        its share; it can only make the check fail (abort).

        Cost per check (of every answer received since the last one): 3 rounds (coin,
        openings, verdict) plus one for the sigma combinations when a sacrificed kind is
        present; one opened element per triple element, matmul a-element and dealt bit, one
        per mask and one per sacrificed kind; the dealer sends each tuple's companion."""
        checked = [e for e in entries if e[0][0] in dealing.SACRIFICED + dealing.MASKS]
        if not checked:
            return
        start = time.perf_counter()
        self._tuple_check_count += 1
        self.stats.tuple_checks += 1
        self.stats.checked_tuples += len(checked)
        failures: list[tuple[str, str, int | None]] = []
        coin = self._coin_toss(b"tuples", self._tuple_check_count, failures)
        t = U128.from_uint64(_stream(coin, 1))

        def chi(index: int, shape: tuple[int, ...]) -> U128:
            seed = _digest(coin, index.to_bytes(8, "little"))
            return U128.from_uint64(_stream(seed, int(np.prod(shape, dtype=np.int64))).reshape(shape))

        first = []
        for index, (spec, values, _) in enumerate(checked):
            if spec[0] in dealing.MASKS:
                mask, companion = values
                first.append(self.mul_public(mask, chi(index, mask.shape)).reshape(-1).sum(0, keepdims=True) + companion)
            else:
                a = values[1] if spec[0] in ("trunc", "bits") else values[0]
                first.append(self.mul_public(a, t) - values[-2])
        opened = self.open(first, "tuple-check")

        sigmas: dict[str, AShare] = {}
        for index, ((spec, values, clear), rho) in enumerate(zip(checked, opened)):
            kind = spec[0]
            if kind in dealing.MASKS:
                if clear is not None:
                    mask_clear, companion_clear = clear
                    expected = ring.sum_axis((mask_clear * chi(index, mask_clear.shape)).reshape(-1), 0).reshape(1)
                    if not rho == expected + companion_clear:
                        failures.append(_TUPLE_CHECKS[kind] + (None,))
                continue
            if kind in ("trunc", "bits"):  # each bit b is the triple (b, b, b): t*b - rho*b in one product
                _, b, _, c2 = values
                sigma = self.mul_public(b, t - rho) - c2
            else:
                _, b, c, _, c2 = values
                sigma = self.mul_public(c, t) - c2 - self._public_product(spec, rho, b)
            combined = self.mul_public(sigma, chi(index, sigma.shape)).reshape(-1).sum(0, keepdims=True)
            sigmas[kind] = combined if kind not in sigmas else sigmas[kind] + combined
        if sigmas:
            for kind, total in zip(sigmas, self.open(list(sigmas.values()), "tuple-check")):
                if not total == U128.zeros((1,)):
                    failures.append(_TUPLE_CHECKS[kind] + (None,))

        verdict = b"\0"
        if failures:  # which kind failed, so every party can name it (255: another check)
            verdict = bytes([1 + _CHECK_ORDER.index(failures[0][:2])]) if failures[0][:2] in _CHECK_ORDER else b"\xff"
        verdicts = self._exchange_bytes(verdict, "tuple-verdict")
        self.stats.tuple_check_seconds += time.perf_counter() - start
        complaints = [(src, v[0]) for src, v in sorted(verdicts.items()) if v != b"\0" and src != self.rank]
        if failures or complaints:  # the run aborts: drop what was opened, as a failed check does
            self._opened.clear()
            self._senders = {r: hashlib.sha256() for r in range(self.parties)}
            self._pending = 0
        if failures:
            check, detail, party = failures[0]
            raise CheatDetected(check, detail, party)
        if complaints:
            src, code = complaints[0]
            if not 1 <= code <= len(_CHECK_ORDER):
                raise CheatDetected("verdict", f"party {src} reported a failed check of the dealt tuples", None)
            check, detail = _CHECK_ORDER[code - 1]
            raise CheatDetected(check, f"{detail} (found by party {src})", None)

    def _zero_share(self) -> U128:
        """A fresh additive sharing of zero from the pairwise seeds."""
        total = U128.zeros((1,))
        counter = self._check_count.to_bytes(8, "little")
        for other, seed in self._pair_seeds.items():
            piece = U128.from_ints(int.from_bytes(hashlib.sha256(seed + counter).digest()[:16], "little"))
            total = total + piece if self.rank < other else total - piece
        return total
