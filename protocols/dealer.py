"""The semi-honest dealer (``triple_source=dealer``): a separate process makes every
correlated tuple and sends each computing party only its own shares.

The dealer is rank ``num_parties`` of the transport (``parties.dealer``: its role, its
serving loop); the computing parties are ranks ``0..num_parties-1`` and run their MPC among
themselves. The dealer sees tuples in the clear but no data: it never receives a share of
anything secret. Both speak the one dealer wire protocol (``protocols.dealer_wire``); this
module holds what is particular to this dealer: its tuples (:class:`SemiHonestMaker`) and
the parties' triple source.

Seeds, not shares: the dealer's greeting gives each party a PRG seed, and each answer draws
from its own stretch of every party's keystream (at a position the answer's first word
names). A tuple's uniformly random components (a triple's a and b, a truncation pair's r)
are whatever the parties' draws add up to; the others (c = a b, msb(r), ...) are drawn too,
except at the tuple's correction party (per request, each tuple goes to the party that has
received the fewest correction elements of it so far: :func:`correction_parties`), which
receives its shares of them: the value minus the others' draws. Only those corrections
travel: one element of a triple's three; where only a component's low k bits matter (a
wrap-bit tuple for a divisor 2^k, a ReLU mask's u as a word), its correction travels as k
bits in a narrower word (:func:`pack_correction`: 16 bits for fixed point's 2^16, a quarter of
the bytes; u in 8).

Flow: every party asks its provider for tuples in the same order (the MPC program is the
same everywhere). A party keeps a buffer of tuples; on a miss, all parties compute the same
prediction of what comes next (the keys that followed this key the last time it was asked
for, i.e. the rest of a training step) and ask the dealer for that whole batch, which
answers each party with one message. While the first step is traced, a product asks for its
triple with its truncation's tuple, a packed comparison for all of its tuples and the loss
gradient for all of its operations' at once (``Prefetcher.expect``). From the second repetition of a step on, the dealer
makes the next step's answer in the background while the parties compute, and the parties
ask for it as soon as the current step's answer has come (``Prefetcher``'s ``ask``), so it
normally arrives before it is needed: no wait for the dealer on a step's path.

A dealer that dies, stalls or sends anything but exactly the shares that were asked for
stops the run with a :class:`DealerError` naming the dealer.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any, Callable, Sequence

import numpy as np
import torch

from protocols import carry4
from protocols.bitpack import pair_products
from protocols.comparison import relu_mask_values
from protocols.dealer_wire import DealerError, DealerLink
from protocols.parts import metered
from protocols.prg import SEED_BYTES, CipherGenerator, new_seed
from protocols.registry import register_part
from protocols.truncation import pair_values
from protocols.tuples import KeyedTripleSource, Prefetcher, check_key, freeze, tuple_layout

log = logging.getLogger("cotrain.dealer")


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
                     "signmask": (True, False, False), "wrapbit": (True, False),
                     "relumask": (True, False, False, False, False, False, True, False),
                     "carry4": (True,) * carry4.INPUTS + (False,) * (carry4.COMPONENTS - carry4.INPUTS)}
# each answer's shares come from its own stretch of every party's keystream, 2^40 bytes long
# (an answer never draws that much), at a position the dealer picks at random per answer
BATCH_STRIDE = 1 << 40
POSITION_BITS = 62  # AES-CTR's 128-bit counter holds 2^62 stretches of 2^36 blocks
_FIRST_POSITION = 64  # past the draw CipherGenerator makes for its torch seed
# elements from which a draw added into a sum goes through one reused buffer (below: a fresh
# draw from the stream's read-ahead is cheaper than a second cipher call)
SCRATCH_ELEMENTS = 1 << 12
# multiply-adds from which a product triple's c is dealt late (2^24: ~20 ms of int64 work on
# a core here, far more than a message): W2b's 1024^3 product is, W6's 512x32x64 ones are not
LATE_WORK = 1 << 24


def batch_stream(seed: bytes, position: int) -> CipherGenerator:
    """A party's stream for the answer at ``position``, the same at the dealer and the party."""
    stream = CipherGenerator(seed)
    stream.stream.seek(_FIRST_POSITION + position * BATCH_STRIDE)
    return stream


def correction_parties(keys: Sequence[tuple], parties: int) -> list[int]:
    """The party that receives the corrections of each of a request's tuples: the one that
    has received the fewest correction words of the request so far (the lowest rank of
    those tied), so every party receives and copies about as much (a party that receives
    more is the slower one of every round after it). Every party computes the same from the
    keys alone."""
    return list(_correction_parties(tuple(keys), parties))


# Per-request plans are cached: a training step asks for the same request every time, and
# working them out again per answer (a few hundred small calls) cost a third of expanding it
_PLANS = 256


@functools.lru_cache(maxsize=_PLANS)
def _correction_parties(keys: tuple, parties: int) -> tuple[int, ...]:
    received, chosen = [0] * parties, []
    for key in keys:
        party = min(range(parties), key=received.__getitem__)
        received[party] += correction_elements(key)
        chosen.append(party)
    return tuple(chosen)


def _draw_at(stream: CipherGenerator, buffer: torch.Tensor, offset: int, count: int) -> None:
    """``stream``'s next ``count`` ring elements written over ``buffer[offset:offset + count]``
    (a flat int64 buffer with 2 elements to spare after them: the cipher may write 15 bytes past)."""
    if count < SCRATCH_ELEMENTS:  # small: a draw from the stream's read-ahead, not a cipher call
        buffer[offset: offset + count] = stream.ring((count,))
    elif count:
        stream.stream.read_into(buffer.numpy().view(np.uint8)[8 * offset:], 8 * count)


class _Scratch:
    """One buffer that every draw only added into a sum lands in, for a whole answer: at a
    process's first deal each fresh 8 MB tensor is 2,048 page faults (4-10 ms here, more on a
    loaded host), more than the cipher's 0.8 ms for its bytes. Not shared between answers
    (they may be made at once)."""

    def __init__(self) -> None:
        self.buffer = torch.empty(0, dtype=torch.int64)

    def draw(self, stream: CipherGenerator, shape: tuple[int, ...]) -> torch.Tensor:
        """``stream``'s next ring elements of ``shape``, valid until the next draw."""
        count = math.prod(shape)
        if self.buffer.numel() < count + 2:
            self.buffer = torch.empty(count + 2, dtype=torch.int64)
        _draw_at(stream, self.buffer, 0, count)
        return self.buffer[:count].view(shape)


def _add_draw(total: torch.Tensor | None, stream: CipherGenerator, shape: tuple[int, ...], sharing: str,
              scratch: _Scratch) -> torch.Tensor:
    """``total`` plus (or XOR) ``stream``'s next draw of ``shape``, in place; the draw itself
    (a fresh tensor, the sum's own) where ``total`` is None."""
    if total is None:
        return stream.ring(shape)
    draw = scratch.draw(stream, shape)
    return total.add_(draw) if sharing == "a" else total.bitwise_xor_(draw)


def _derived(key: tuple, random: list[Any], rng: CipherGenerator) -> list[torch.Tensor | None]:
    """Every component's value given the random ones' (None where random; wrap's r is the
    list of the parties' own r). The random values are the dealer's own sums, used for
    nothing else: a result of their shape may be computed over one of them."""
    kind = key[0]
    if kind == "triple":
        _, op, _, _, kwargs = key
        if op == "mul" and random[0].shape == random[1].shape:
            return [None, None, random[0].mul_(random[1])]
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
        return [None, -random[0], pair_products(-random[0])]
    if kind == "wrapbit":  # the AND of the words' top bits: the top bit of their AND
        words = random[0]
        for word in words[1:]:
            words[0].bitwise_and_(word)
        return [None, words[0].lt_(0)]
    if kind == "relumask":
        return relu_mask_values(random[0], random[6], rng.bits(key[1], 1))
    if kind == "carry4":
        return [None] * carry4.INPUTS + carry4.carry4_values(torch.stack(random[:carry4.INPUTS]))[carry4.INPUTS:]
    raise ValueError(f"unknown tuple kind {kind!r}")


def late_components(key: tuple) -> tuple[int, ...]:
    """The components of ``key`` whose correction travels in the answer's late part: a
    matrix product's or convolution's c where making it costs the dealer at least
    ``LATE_WORK`` multiply-adds. The parties open eps and delta (and compute their own two
    products) meanwhile and take c last (``protocols.crypten_hooks``), so the dealer's product
    is off their path; the dealer deals such a tuple whole after the answer (every one of its
    components that is not random is late). Elementwise products are never late (a pass over
    memory, like sending)."""
    if key[0] != "triple" or key[1] == "mul":
        return ()
    _, op, size0, size1, _ = key
    if op.startswith("conv_transpose"):  # every input element meets every weight of its group
        work = math.prod(size0) * math.prod(size1[1:])
    else:  # each result element: the inner dimension (matmul), or a kernel's weights (conv)
        work = math.prod(tuple_layout(key)[2][1]) * (size0[-1] if op == "matmul" else math.prod(size1[1:]))
    return (2,) if work >= LATE_WORK else ()


def late_parts(keys: Sequence[tuple]) -> list[tuple[int, ...]]:
    """Per key of a request, the components whose correction travels in the late part: a
    large product's c (:func:`late_components`), and every component that is not random of
    the truncation tuple asked for right after it for its result (a product announces its
    triple with its truncation's tuple: ``Prefetcher.expect``), which is used only once c is
    in. Without it, the answer waits for that tuple's dealing and carries its corrections
    (W2b: 1M words, and the first deal of a process pays page faults on every fresh buffer)
    before the parties can expand a and b and open."""
    return list(_late_parts(tuple(keys)))


@functools.lru_cache(maxsize=_PLANS)
def _late_parts(keys: tuple) -> tuple[tuple[int, ...], ...]:
    parts: list[tuple[int, ...]] = []
    for index, key in enumerate(keys):
        late = late_components(key)
        if not late and index and late_components(keys[index - 1]) and _truncates(keys[index - 1], key):
            late = tuple(j for j, random in enumerate(RANDOM_COMPONENTS[key[0]]) if not random)
        parts.append(late)
    return tuple(parts)


def _truncates(product: tuple, key: tuple) -> bool:
    """Whether ``key`` is a truncation tuple for the result of the triple ``product``."""
    return key[0] in ("trunc", "wrapbit") and key[1] == tuple_layout(product)[2][1]


def deal(key: tuple, streams: Sequence[CipherGenerator], correction: int, rng: CipherGenerator,
         out: torch.Tensor, offset: int, scratch: _Scratch) -> int:
    """Write the correction party's shares of ``key``'s components that are not random into
    ``out`` from ``offset`` (flat int64, 2 elements to spare at its end), in order and in the
    words they travel in (:func:`pack_correction`): the value minus (XOR) the other parties'
    draws, which are summed as they are drawn, in place in ``out`` (a narrow correction's apart,
    at full width, then packed). Every party's stream moves past the tuple as in :func:`expand`
    (its draws of every component it does not receive, in order). Returns the offset after the
    tuple's corrections."""
    layout = tuple_layout(key)
    randoms = RANDOM_COMPONENTS[key[0]]
    at, end = {}, offset  # where each correction goes
    for j, is_random in enumerate(randoms):
        if not is_random:
            at[j], end = end, end + correction_words(key, j)
    narrow = {j for j in at if _correction_width(key, j)[1] != torch.int64}
    sums = {j: torch.empty(math.prod(layout[j][1]) + 2, dtype=torch.int64) if j in narrow else out[start:]
            for j, start in at.items()}
    random: list[Any] = [None] * len(layout)  # the values of the random components
    started: set[int] = set()  # corrections holding a draw to add the next ones to
    for party, stream in enumerate(streams):
        for j, ((sharing, shape), is_random) in enumerate(zip(layout, randoms)):
            if is_random and sharing == "r":
                random[j] = (random[j] or []) + [stream.ring(shape)]
            elif is_random:
                random[j] = _add_draw(random[j], stream, shape, sharing, scratch)
            elif party != correction and j in started:
                draw = scratch.draw(stream, shape).reshape(-1)
                target = sums[j][: draw.numel()]
                target.add_(draw) if sharing == "a" else target.bitwise_xor_(draw)
            elif party != correction:
                _draw_at(stream, sums[j], 0, math.prod(shape))
                started.add(j)
    for j, value in enumerate(_derived(key, random, rng)):
        if value is not None:
            target = sums[j][: value.numel()]
            combine = torch.bitwise_xor if layout[j][0] == "b" else torch.sub
            combine(value.reshape(-1), target, out=target)
            if j in narrow:
                out[at[j]: at[j] + correction_words(key, j)] = pack_correction(key, j, target)
    return end


def _drawn_bytes(key: tuple, party: int, correction: int) -> int:
    """How far one tuple moves ``party``'s stream: every component it does not receive."""
    return 8 * sum(math.prod(shape) for (_, shape), random in zip(tuple_layout(key), RANDOM_COMPONENTS[key[0]])
                   if random or party != correction)


@functools.lru_cache(maxsize=4096)
def correction_elements(key: tuple) -> int:
    """Words (int64) of one tuple its correction party receives."""
    return sum(correction_words(key, j) for j, random in enumerate(RANDOM_COMPONENTS[key[0]]) if not random)


# Narrow corrections: where only a component's low bits matter (a wrap-bit tuple asked for
# k bits: ``tuples.wrap_bit_key``; a ReLU mask's u as a word, of which the ReLU reads bit 0
# alone), its correction travels as the narrowest of these words that holds them, packed into
# int64 words (the last one zero-padded)
_NARROW = ((8, torch.int8), (16, torch.int16), (32, torch.int32))


@functools.lru_cache(maxsize=4096)
def _correction_width(key: tuple, j: int) -> tuple[int, torch.dtype]:
    """The bits of component ``j``'s value its shares must add up to (mod 2^bits), and the word
    its correction travels in."""
    if key[0] == "wrapbit" and len(key) == 3 and j == 1:
        bits = key[2]
    else:
        bits = 1 if key[0] == "relumask" and j == 4 else 64
    return bits, next((dtype for width, dtype in _NARROW if bits <= width), torch.int64)


@functools.lru_cache(maxsize=4096)
def correction_words(key: tuple, j: int) -> int:
    """int64 words the correction of component ``j`` of ``key`` takes in an answer."""
    count, (_, dtype) = math.prod(tuple_layout(key)[j][1]), _correction_width(key, j)
    per_word = 8 // dtype.itemsize
    return -(-count // per_word)


def pack_correction(key: tuple, j: int, values: torch.Tensor) -> torch.Tensor:
    """Component ``j``'s correction as the int64 words it travels in: its low bits only, where
    only they matter (a cast to a narrower integer keeps the low bits)."""
    bits, dtype = _correction_width(key, j)
    values = values.reshape(-1)
    if dtype == torch.int64:
        return values
    per_word = 8 // dtype.itemsize
    packed = torch.zeros(correction_words(key, j) * per_word, dtype=dtype)
    packed[: values.numel()] = (values & ((1 << bits) - 1)).to(dtype)
    return packed.view(torch.int64)


def unpack_correction(key: tuple, j: int, words: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The correction of component ``j`` (of ``shape``) from its words in an answer; a narrow one
    is refused unless its padding and the bits above the ones that matter are zero (anything
    else is not what this party asked for)."""
    bits, dtype = _correction_width(key, j)
    if dtype == torch.int64:
        return words.reshape(shape)
    narrow, count = words.view(dtype), math.prod(shape)
    if narrow[count:].any() or (bits < 8 * dtype.itemsize and (narrow[:count] >> bits).any()):
        raise DealerError(f"the dealer sent a malformed answer: a {bits}-bit correction of {key!r} "
                          f"has bits set beyond its {bits} or in its padding")
    return narrow[:count].to(torch.int64).reshape(shape)


def answer_elements(keys: Sequence[tuple], party: int, parties: int) -> int:
    """What ``party`` receives for a request in all: the position word, then its corrections."""
    return sum(answer_parts(keys, party, parties))


def answer_parts(keys: Sequence[tuple], party: int, parties: int) -> tuple[int, int]:
    """What ``party`` receives for a request: in the answer, the position word and its
    corrections but the late ones; in the late part (none where 0), the late ones."""
    return _answer_sizes(tuple(keys), parties)[party]


@functools.lru_cache(maxsize=_PLANS)
def _answer_sizes(keys: tuple, parties: int) -> tuple[tuple[int, int], ...]:
    """:func:`answer_parts` of every party."""
    sizes = [[1, 0] for _ in range(parties)]
    for key, corrector, late in zip(keys, _correction_parties(keys, parties), _late_parts(keys)):
        deferred = sum(correction_words(key, j) for j in late)
        sizes[corrector][0] += correction_elements(key) - deferred
        sizes[corrector][1] += deferred
    return tuple((first, rest) for first, rest in sizes)


def expand(keys: Sequence[tuple], seed: bytes, answer: torch.Tensor, party: int, parties: int,
           late: torch.Tensor | None = None) -> list[list[torch.Tensor | None]]:
    """A party's shares of a request from its seed and its answer (the position word, then
    the corrections of the tuples it is the correction party of), in the order :func:`deal`
    drew, and the answer's late part (``late``; where None, the late shares are left None, to
    be filled by :func:`fill_late` when it comes)."""
    stream = batch_stream(seed, int(answer[0]))
    batch, offset = [], 1
    for key, components in zip(keys, _receipt(tuple(keys), party, parties)):
        shares: list[torch.Tensor | None] = []
        if key[:2] == ("triple", "mul") and components[0] == components[1] and components[0][1] is None:
            # an elementwise triple's a and b drawn as one block (the same words): the Beaver
            # product opens them in place
            shares.extend(stream.ring((2, *components[0][0])).unbind(0))
        for j, (shape, words) in enumerate(components):
            if j < len(shares):
                continue
            if words is None:
                shares.append(stream.ring(shape))
            elif words is _LATE:
                shares.append(None)
            else:
                shares.append(unpack_correction(key, j, answer[offset: offset + words], shape))
                offset += words
        batch.append(shares)
    if late is not None:
        fill_late(keys, batch, late, party, parties)
    return batch


_LATE = "late"


@functools.lru_cache(maxsize=_PLANS)
def _receipt(keys: tuple, party: int, parties: int) -> tuple[tuple[tuple[tuple[int, ...], Any], ...], ...]:
    """How ``party`` gets each component of each tuple of a request, in :func:`deal`'s order:
    (its shape, a ``torch.Size``; None: drawn from the stream; ``_LATE``: in the late part;
    else the answer words its correction takes)."""
    plan = []
    for key, corrector, deferred in zip(keys, _correction_parties(keys, parties), _late_parts(keys)):
        plan.append(tuple((torch.Size(shape), None if random or corrector != party else _LATE if j in deferred
                           else correction_words(key, j))
                          for j, ((_, shape), random) in enumerate(zip(tuple_layout(key), RANDOM_COMPONENTS[key[0]]))))
    return tuple(plan)


def fill_late(keys: Sequence[tuple], batch: list[list[torch.Tensor | None]], late: torch.Tensor, party: int,
              parties: int) -> None:
    """Put the answer's late part (``party``'s late corrections, in request order) into the
    shares :func:`expand` left None, in place (the lists the prefetcher holds)."""
    offset = 0
    for key, corrector, shares, lates in zip(keys, correction_parties(keys, parties), batch, late_parts(keys)):
        for j in lates if corrector == party else ():
            count = correction_words(key, j)
            shares[j] = unpack_correction(key, j, late[offset: offset + count], tuple_layout(key)[j][1])
            offset += count


def deal_parts(keys: Sequence[tuple], seeds: Sequence[bytes], position: int,
               rng: CipherGenerator) -> tuple[list[torch.Tensor], Callable[[], list[torch.Tensor]] | None]:
    """Each party's answer for a request (the position word, then its corrections but the
    late ones), and a function that makes each party's late part (None where nothing is late).
    A tuple with a late component is dealt whole by that function, from the stretch of every
    stream it would have drawn in order (skipped here), so the answer goes without waiting
    for its product. Corrections are written straight into each party's answer."""
    parties = len(seeds)
    streams = [batch_stream(seed, position) for seed in seeds]
    correctors, lates = correction_parties(keys, parties), late_parts(keys)
    sizes = _answer_sizes(tuple(keys), parties)
    buffers = [torch.empty(first + 2, dtype=torch.int64) for first, _ in sizes]  # 2 to spare: deal's
    for buffer in buffers:
        buffer[0] = position
    filled, scratch = [1] * parties, _Scratch()
    # a late tuple, its correction party, where each stream was
    pending: list[tuple[tuple, int, list[int]]] = []
    for key, correction, deferred in zip(keys, correctors, lates):
        if deferred:
            pending.append((key, correction, [stream.stream.bytes_drawn for stream in streams]))
            for party, stream in enumerate(streams):
                stream.stream.seek(stream.stream.bytes_drawn + _drawn_bytes(key, party, correction))
            continue
        filled[correction] = deal(key, streams, correction, rng, buffers[correction], filled[correction], scratch)
    answers = [buffer[:first] for buffer, (first, _) in zip(buffers, sizes)]
    if not pending:
        return answers, None

    def late() -> list[torch.Tensor]:
        parts = [torch.empty(rest + 2, dtype=torch.int64) for _, rest in sizes]
        filled, scratch = [0] * parties, _Scratch()
        for key, correction, starts in pending:
            streams = [batch_stream(seed, position) for seed in seeds]
            for stream, start in zip(streams, starts):
                stream.stream.seek(start)
            filled[correction] = deal(key, streams, correction, rng, parts[correction], filled[correction], scratch)
        return [part[:rest] for part, (_, rest) in zip(parts, sizes)]

    return answers, late


def whole_answers(first: list[torch.Tensor], late: Callable[[], list[torch.Tensor]] | None) -> list[torch.Tensor]:
    """Each party's whole answer: the answer, then its late part."""
    return first if late is None else [torch.cat([answer, rest]) for answer, rest in zip(first, late())]


def deal_answers(keys: Sequence[tuple], seeds: Sequence[bytes], position: int, rng: CipherGenerator) -> list[torch.Tensor]:
    """Each party's whole answer for a request: the answer, then its late part."""
    return whole_answers(*deal_parts(keys, seeds, position, rng))


class SemiHonestMaker:
    """The dealer's tuples for ``triple_source=dealer``: keys as in ``protocols.tuples``,
    each party's shares of a request flattened into one int64 buffer in request order."""

    kind = "dealer"
    concurrent = True  # deals share no state (each draws from a generator of its own): two may run at once

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.seeds = [new_seed() for _ in range(parties)]

    def greeting(self) -> list[torch.Tensor]:
        """Each party's seed."""
        return [torch.frombuffer(bytearray(seed), dtype=torch.int64) for seed in self.seeds]

    def validate(self, items: Any) -> list[tuple]:
        if not isinstance(items, list):
            raise ValueError("a request is a list of tuple keys")
        keys = [check_key(key) for key in items]
        if self.parties != 2 and any(key[0] == "wrapbit" for key in keys):
            raise ValueError(f"a wrap-bit tuple is for two parties, not {self.parties}")
        return keys

    def deal(self, items: Sequence[tuple]) -> list[torch.Tensor]:
        """Each party's whole answer (the answer, then its late part)."""
        return whole_answers(*self.deal_parts(items))

    def deal_parts(self, items: Sequence[tuple]) -> tuple[list[torch.Tensor], Callable[[], list[torch.Tensor]] | None]:
        """The answer now, and a function that makes the late part (:func:`deal_parts`)."""
        rng = CipherGenerator(new_seed())
        position = int(rng.bits(1, POSITION_BITS)[0])  # a fresh stretch of every keystream
        return deal_parts(items, self.seeds, position, rng)


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
        self.prefetcher = Prefetcher(self._request, ask=self._ask, collect=self._collect)
        self.failed = False  # after a DealerError there is no dealer to say goodbye to
        # answers whose late part has not been received yet: (keys, their shares, elements)
        self.pending_late: list[tuple[list[tuple], list[list[Any]], int]] = []

    def start(self, crypten: Any) -> None:
        # the parties' world ends where the dealer's rank begins
        self.link = DealerLink(self.comm, self.comm.get_world_size())
        with metered(self.counters, "offline"):
            greeting = self.link.hello(SemiHonestMaker.kind)
        self.seed = greeting.numpy().tobytes()
        if len(self.seed) != SEED_BYTES:
            self.failed = True
            raise DealerError(f"the dealer sent a malformed seed: {len(self.seed)} bytes, expected {SEED_BYTES}")

    def stop(self, crypten: Any) -> None:
        if self.link is None or self.failed:
            return
        try:
            self.prefetcher.take_asked()  # the dealer sends every answer before it reads on
            self.take_late()
            self.link.stop()
        except DealerError as error:  # the run is ending anyway; say why the dealer may linger
            log.warning("could not tell the dealer to stop: %s", error)

    def carry4_tuple(self, size: Any, device: Any = None) -> list[torch.Tensor]:
        return self._counted_fetch(("carry4", freeze(size)), device)

    def fetch(self, key: tuple) -> list[torch.Tensor]:
        """This party's shares of the next tuple for ``key`` (batched by the prefetcher)."""
        if self.link is None:
            raise DealerError("the dealer triple source was used before the secure session started")
        return self.prefetcher.fetch(key)

    def _request(self, keys: list[tuple]) -> list[list[torch.Tensor]]:
        self._ask(keys, False)
        return self._collect(keys)

    def _ask(self, keys: list[tuple], again: bool) -> None:
        # the dealer sends a late part before it reads on, and a send may wait for its
        # receiver (gloo's do): take it before sending, or both sides wait on each other
        self.take_late()
        try:
            with metered(self.counters, "offline"):
                self.link.request(keys, again)
        except DealerError:
            self.failed = True
            raise

    def _collect(self, keys: list[tuple]) -> list[list[torch.Tensor]]:
        self.take_late()  # the dealer sends an answer's late part before the next answer
        try:
            with metered(self.counters, "offline"):
                return self._receive_batch(keys)
        except DealerError:
            self.failed = True
            raise

    def take_late(self) -> None:
        """Receive the late parts still owed (a matrix product's c and its truncation's tuple: :func:`late_parts`)
        into the shares handed out or buffered without them."""
        rank, parties = self.comm.get_rank(), self.comm.get_world_size()
        try:
            with metered(self.counters, "offline"):
                while self.pending_late:
                    keys, batch, elements = self.pending_late[0]
                    fill_late(keys, batch, self.link.late(len(keys), elements), rank, parties)
                    self.pending_late.pop(0)
        except DealerError:
            self.failed = True
            raise

    def _receive_batch(self, keys: list[tuple]) -> list[list[torch.Tensor]]:
        rank, parties = self.comm.get_rank(), self.comm.get_world_size()
        first, late = answer_parts(keys, rank, parties)
        answer = self.link.answer(len(keys), first)
        if not 0 <= int(answer[0]) < 1 << POSITION_BITS:
            raise DealerError(f"the dealer sent a malformed answer: keystream position {int(answer[0])}")
        batch = expand(keys, self.seed, answer, rank, parties)  # late shares None until they come
        if late:
            self.pending_late.append((keys, batch, late))
        return batch

    def describe(self) -> str:
        return "dealer (a separate dealer process makes every tuple; the parties expand their shares from seeds)"

