"""Tuple requests as keys, a prefetcher that batches them, and a CrypTen provider over both.

A key names one correlated tuple: ``("triple", op, size0, size1, kwargs)``, ``("square",
size)``, ``("binary", size0, size1)``, ``("b2a", size)``, ``("wrap", size)``, ``("trunc",
size, divisor)``, ``("signmask", size)`` (r, -r as a word and the ANDs of that word's bit
pairs) or ``("wrapbit", size)`` (two parties: each party's own random word, whose top bit
is its private bit, and shares of the AND of the two bits; ``("wrapbit", size, bits)``: shares
that need add up only mod 2^bits, :func:`wrap_bit_key`) or ``("carry4", size)`` (seven
random words and ANDs of them, ``protocols.carry4``); :func:`tuple_layout` says what
shares it consists of. Triple sources that
make tuples in batches (the dealer, OT) get CrypTen's requests as keys through
:func:`keyed_provider` and batch them with a :class:`Prefetcher`: every party asks for the
same keys in the same order, so all parties predict the same batch without talking.
"""

from __future__ import annotations

import collections
import functools
import math
from typing import Any, Callable, Sequence

import numpy as np
import torch

from protocols.carry4 import COMPONENTS
from protocols.crypten_hooks import drop_provider, meter_online_tuple_use, unmeter_online_tuple_use, use_provider
from protocols.parts import TripleSource, UnsupportedTuple
from protocols.share_tensors import to_device

MAX_ELEMENTS = 1 << 28  # per tuple: a bound on what a party may ask for
_CONV_OPS = ("conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d")
_OPS = ("mul", "matmul") + _CONV_OPS


def freeze(value: Any) -> Any:
    """Lists (as msgpack delivers tuples) back into hashable tuples."""
    if isinstance(value, (list, tuple, torch.Size)):
        return tuple(freeze(item) for item in value)
    return value


def _size(value: Any) -> tuple[int, ...]:
    size = freeze(value)
    if not isinstance(size, tuple) or not all(isinstance(s, int) and s >= 0 for s in size):
        raise ValueError(f"bad tensor size {value!r}")
    return size


@functools.lru_cache(maxsize=1024)
def _result_shape(op: str, size0: tuple, size1: tuple, kwargs: tuple) -> tuple[int, ...]:
    """The shape of ``op(a, b)``, cached: a training step asks for the same few shapes every
    time. Products and plain matrix products by their rules; the rest (batched products,
    convolutions) on meta tensors, whose first use imports sympy (seconds)."""
    if op == "mul":
        return tuple(np.broadcast_shapes(size0, size1))
    if op == "matmul" and len(size0) == len(size1) == 2 and size0[1] == size1[0]:
        return (size0[0], size1[1])
    a = torch.empty(size0, dtype=torch.float32, device="meta")
    b = torch.empty(size1, dtype=torch.float32, device="meta")
    return tuple(getattr(torch, op)(a, b, **dict(kwargs)).shape)


def tuple_layout(key: tuple) -> list[tuple[str, tuple[int, ...]]]:
    """What a tuple is made of: (sharing, shape) per component; 'a' arithmetic, 'b' XOR."""
    kind = key[0]
    if kind == "triple":
        _, op, size0, size1, kwargs = key
        if op not in _OPS:
            raise ValueError(f"unknown triple operation {op!r}")
        return [("a", size0), ("a", size1), ("a", _result_shape(op, size0, size1, kwargs))]
    if kind == "square":
        return [("a", key[1]), ("a", key[1])]
    if kind == "binary":
        _, size0, size1 = key
        return [("b", size0), ("b", size1), ("b", tuple(np.broadcast_shapes(size0, size1)))]
    if kind in ("wrap", "wrapbit"):
        return [("r", key[1]), ("a", key[1])]
    if kind == "b2a":
        return [("a", key[1]), ("b", key[1])]
    if kind == "signmask":
        return [("a", key[1]), ("b", key[1]), ("b", key[1])]
    if kind == "relumask":  # r, -r, its pair products, u, u (XOR-shared: bit 0 alone is u), r u, a, a u
        return [("a", key[1]), ("b", key[1]), ("b", key[1]), ("a", key[1]), ("b", key[1])] + [("a", key[1])] * 3
    if kind == "trunc":
        return [("a", key[1])] * 3
    if kind == "carry4":  # seven masks and their subsets' ANDs (protocols.carry4)
        return [("b", key[1])] * COMPONENTS
    raise ValueError(f"unknown tuple kind {kind!r}")


def check_key(key: Any) -> tuple:
    """A request key as sent by a party, validated and made hashable."""
    key = freeze(key)
    if not isinstance(key, tuple) or not key or not isinstance(key[0], str):
        raise ValueError(f"malformed tuple request {key!r}")
    kind = key[0]
    if kind == "triple":
        if len(key) != 5 or not isinstance(key[1], str):
            raise ValueError(f"malformed triple request {key!r}")
        key = ("triple", key[1], _size(key[2]), _size(key[3]),
               tuple((str(k), freeze(v)) for k, v in key[4]))
    elif kind == "binary":
        if len(key) != 3:
            raise ValueError(f"malformed binary triple request {key!r}")
        key = ("binary", _size(key[1]), _size(key[2]))
    elif kind == "wrapbit" and len(key) == 3:
        if not isinstance(key[2], int) or not 1 <= key[2] < 64:
            raise ValueError(f"malformed wrap-bit request {key!r}: its bits are 1 to 63")
        key = ("wrapbit", _size(key[1]), key[2])
    elif kind in ("square", "wrap", "b2a", "signmask", "relumask", "wrapbit", "carry4"):
        if len(key) != 2:
            raise ValueError(f"malformed {kind} request {key!r}")
        key = (kind, _size(key[1]))
    elif kind == "trunc":
        if len(key) != 3 or not isinstance(key[2], int) or key[2] < 1:
            raise ValueError(f"malformed truncation pair request {key!r}")
        key = ("trunc", _size(key[1]), key[2])
    else:
        raise ValueError(f"unknown tuple kind {kind!r}")
    elements = sum(math.prod(shape) for _, shape in tuple_layout(key))
    if elements > MAX_ELEMENTS:
        raise ValueError(f"tuple request of {elements} elements is over the limit {MAX_ELEMENTS}")
    return key


def triple_key(op: str, size0: Any, size1: Any, kwargs: dict) -> tuple:
    """The key of the triple for ``op(a, b, **kwargs)`` with a of ``size0`` and b of ``size1``."""
    return ("triple", op, freeze(size0), freeze(size1), tuple(sorted((k, freeze(v)) for k, v in kwargs.items())))


def wrap_bit_key(size: Any, bits: int = 64) -> tuple:
    """The key of a wrap-bit tuple whose AND shares need add up only mod 2^``bits`` (all 64:
    the plain key). ``topbits`` uses them shifted left by 64 - k for a divisor 2^k, so it asks
    for k bits, and a dealer may send the correction party's share in a narrower word."""
    return ("wrapbit", freeze(size)) if bits >= 64 else ("wrapbit", freeze(size), int(bits))


def tuple_elements(key: tuple) -> int:
    return sum(math.prod(shape) for _, shape in tuple_layout(key))


# -- batching (the parties' side) ---------------------------------------------------------------
def worth_guessing(batch: list[tuple] | None) -> list[tuple] | None:
    """``batch``, where asking for it again before it is known to repeat risks little: no
    triple of a matrix product or convolution (dealing one multiplies matrices, work far
    beyond sending it, that a guess which does not come true would waste while the parties
    compute on the same cores)."""
    if batch and all(key[0] != "triple" or key[1] == "mul" for key in batch):
        return batch
    return None


class Prefetcher:
    """Buffers tuples per key; on a miss, asks ``produce`` for the batch it predicts.

    The prediction: the keys that followed this key, in this context (the keys just before
    it), the last time it occurred, up to the present, i.e. the rest of a repeating
    training step. The first step is traced one key at a time, but for the runs of keys a
    protocol announces (:meth:`expect`).

    A source whose batches are a request and an answer (``ask(batch, again)`` sends the
    request, ``collect`` waits for its answer) is asked one batch ahead: once a batch has come
    (predicted, or traced the first time a key or an announced run is used), the same batch
    is asked for again at once (in the request that asked for it, ``again``, where it was
    asked for at a miss: the source answers it twice), and its answer is collected at the next miss, so the source
    makes and sends it while the parties compute: a product repeated (a benchmark's loop, a
    step's first repetitions) finds its tuples waiting from its second use on. A batch asked
    ahead that goes unused costs the source its work, so a batch is asked for again before
    it is known to repeat only where dealing it costs about what sending it does
    (:func:`worth_guessing`: no matrix products or convolutions, whose triples cost the
    source far more); a key's buffered tuples are dropped once ``lookahead`` keys have been
    fetched since they came (memory stays bounded when keys do not repeat). A span between two
    uses of a context unlike both spans before it (an epoch's first step, whose span holds the
    last step and the held-out evaluation) is made but not asked for again ahead: it is no
    period that repeats at once, and its copy would wait an epoch (the last never used). The
    step after it is a period again (its span is the one before last) and is asked ahead.
    """

    def __init__(self, produce: Callable[[list[tuple]], list[list[torch.Tensor]]],
                 lookahead: int = 4096, context: int = 8,
                 ask: Callable[[list[tuple], bool], None] | None = None,
                 collect: Callable[[list[tuple]], list[list[torch.Tensor]]] | None = None) -> None:
        self.produce = produce
        self.lookahead = lookahead
        self.context = context
        self.ask, self.collect = ask, collect
        self.asked: list[tuple] | None = None  # the batch asked ahead for, not yet collected
        self.buffer: dict[tuple, collections.deque] = collections.defaultdict(collections.deque)
        self.history: list[tuple] = []
        self.last_seen: dict[tuple, int] = {}
        self.period: dict[tuple, tuple[int, ...]] = {}  # context -> fetches between its last uses (two spans)
        self.batches = 0
        self.stored_at: dict[tuple, int] = {}  # key -> len(history) when its tuples last came

    def fetch(self, key: tuple) -> list[torch.Tensor]:
        """This party's shares of the next tuple for ``key``."""
        position = len(self.history)
        context = self._context(key)
        previous = self.last_seen.get(context)
        spans = self.period.get(context, ())
        if previous is not None:
            self.period[context] = (*spans, position - previous)[-2:]
        self.history.append(key)
        self.last_seen[context] = position
        if not self.buffer[key]:
            collected = self.take_asked()
            predicted = self.history[previous:position][: self.lookahead] if previous is not None else None
            # a span unlike both before it between two uses of this context (an epoch's first
            # step: the last step, the evaluation and this step so far) is no period that repeats
            # at once: its tuples are made, but not asked for again ahead (they would wait an
            # epoch); the step after it, like the span before last, is a period again
            repeating = predicted if predicted and (not spans or position - previous in spans) else None
            made = None
            if not self.buffer[key]:
                made = predicted or [key]
                self._produce(made, again=bool(repeating or worth_guessing(made)))
            self._ask_ahead(repeating or worth_guessing(made or collected))
        return self.buffer[key].popleft()

    def take_asked(self) -> list[tuple] | None:
        """Collect the answer to the batch asked ahead for, if one is outstanding (before
        any other request, and before the source stops); returns that batch."""
        if self.asked is None:
            return None
        batch, self.asked = self.asked, None
        self._store(batch, self.collect(batch))
        return batch

    def _ask_ahead(self, batch: list[tuple] | None) -> None:
        """Ask for ``batch`` again, to be collected at the next miss (sources that ask)."""
        if batch and self.ask is not None and self.asked is None:
            self.asked = list(batch)
            self.ask(self.asked, False)

    def _drop_stale(self) -> None:
        """Forget the buffered tuples of keys that ``lookahead`` fetches since their tuples came
        have not used up: a batch covers at most that many fetches, so they were asked ahead
        for a repetition that did not come (discarded randomness, never handed out twice)."""
        now = len(self.history)
        for key in [key for key, queue in self.buffer.items() if queue and now - self.stored_at[key] > self.lookahead]:
            del self.buffer[key]

    def expect(self, keys: Sequence[tuple]) -> None:
        """The next fetches will be ``keys``, in this order (a protocol that knows its own
        tuples says so): where the first would miss with nothing to predict from (the first
        time it runs), ask for all of them in one batch instead of one at a time."""
        if not keys or self.buffer[keys[0]] or self._context(keys[0]) in self.last_seen:
            return
        collected = self.take_asked()  # the same run, asked ahead at its last use
        if not self.buffer[keys[0]]:
            wanted = collections.Counter(keys)
            collected = [key for key in dict.fromkeys(keys)
                         for _ in range(wanted[key] - len(self.buffer[key]))][: self.lookahead]
            self._produce(collected, again=worth_guessing(collected) is not None)
        self._ask_ahead(worth_guessing(collected))

    def _context(self, key: tuple) -> tuple:
        """The keys up to and including ``key`` were it fetched next: what predictions follow."""
        return tuple(self.history[-(self.context - 1):] + [key]) if self.context > 1 else (key,)

    def _produce(self, batch: list[tuple], again: bool = False) -> None:
        """Get ``batch`` now; ``again``: it is to be asked for again at once (the batch a miss
        asks ahead for), which a source that asks takes in the same request: it answers,
        then sends a second answer, collected at the next miss (one request, not two)."""
        self.take_asked()
        if not again or self.ask is None:
            self._store(batch, self.produce(batch))
            return
        self.ask(batch, True)
        self._store(batch, self.collect(batch))
        self.asked = list(batch)

    def _store(self, batch: list[tuple], produced: list[list[torch.Tensor]]) -> None:
        if len(produced) != len(batch):
            raise RuntimeError(f"a batch of {len(batch)} tuples came back with {len(produced)}")
        self._drop_stale()
        for batch_key, shares in zip(batch, produced):
            self.buffer[batch_key].append(shares)
            self.stored_at[batch_key] = len(self.history)
        self.batches += 1


def keyed_provider(crypten: Any, name: str, source: Any) -> Any:
    """A CrypTen tuple provider that turns each request into a key for ``source.fetch``.

    ``source`` has ``fetch(key) -> shares`` (in :func:`tuple_layout` order) and ``counters``.
    """
    from crypten.mpc.primitives import ArithmeticSharedTensor as AST
    from crypten.mpc.primitives import BinarySharedTensor as BST

    def wrap(layout: Sequence[tuple[str, tuple]], shares: Sequence[torch.Tensor], device: Any) -> list[Any]:
        out = []
        for (sharing, _), share in zip(layout, shares):
            share = to_device(share, device) if device is not None else share
            out.append(BST.from_shares(share) if sharing == "b" else AST.from_shares(share, precision=0))
        return out

    class KeyedProvider(crypten.mpc.provider.provider.TupleProvider):
        NAME = name

        def _shares(self, key: tuple) -> list[Any]:
            source.counters.calls += 1
            source.counters.tuples += tuple_elements(key)
            return source.fetch(key)

        def _get(self, key: tuple, device: Any) -> list[Any]:
            shares = self._shares(key)
            if any(share is None for share in shares):  # a late part still to come: wait for it here
                source.take_late()
            return wrap(tuple_layout(key), shares, device)

        def generate_additive_triple(self, size0, size1, op, device=None, *args, **kwargs):
            if args:
                raise UnsupportedTuple(f"positional arguments to a {op} triple are not supported: {args}")
            return tuple(self._get(triple_key(op, size0, size1, kwargs), device))

        def additive_triple_later(self, size0, size1, op, device=None, **kwargs):
            """a and b of a triple now, and a function that gives its c, which may come late
            (``protocols.dealer.late_components``): the Beaver product asks for c only once
            it has opened eps and delta and made its own products."""
            key = triple_key(op, size0, size1, kwargs)
            shares, layout = self._shares(key), tuple_layout(key)

            def product() -> Any:
                if shares[2] is None:
                    source.take_late()  # fills ``shares`` in place
                return wrap(layout[2:], shares[2:], device)[0]

            return (*wrap(layout[:2], shares[:2], device), product)

        def square(self, size, device=None):
            return tuple(self._get(("square", freeze(size)), device))

        def expect_operations(self, operations: Sequence[tuple]) -> None:
            """The operations that come next (:meth:`KeyedTripleSource.expect_operations`)."""
            source.expect_operations(operations)

        def generate_binary_triple(self, size0, size1, device=None):
            return tuple(self._get(("binary", freeze(size0), freeze(size1)), device))

        def wrap_rng(self, size, device=None):
            return tuple(self._get(("wrap", freeze(size)), device))

        def B2A_rng(self, size, device=None):
            return tuple(self._get(("b2a", freeze(size)), device))

    return KeyedProvider()


def _product_key(op: str, size0: Any, size1: Any, kwargs: dict) -> tuple:
    """The key of the tuple a product ``op`` (``square`` or a triple's op) of these sizes asks for."""
    return ("square", freeze(size0)) if op == "square" else triple_key(op, size0, size1, kwargs)


class KeyedTripleSource(TripleSource):
    """A triple source whose tuples CrypTen fetches by request key (dealer, OT).

    Subclasses name their provider, implement ``fetch(key)`` and batch with ``prefetcher``.
    """

    provider_name = ""
    prefetcher: Prefetcher

    def expect(self, keys: Sequence[tuple]) -> None:
        self.prefetcher.expect(keys)

    def expect_operations(self, operations: Sequence[tuple]) -> None:
        """The hint of :meth:`expect` in terms of operations, for code that knows the run of
        operations it is about to do but not the tuples the session's parts ask for them:
        ``("relu", size)``, ``("mul", size)`` (an elementwise product of two sharings of
        ``size``), ``("square", size)`` and ``("divide", size, divisor)``. Their tuples are
        announced as one run, so the first time it runs they come in one request."""
        parts = self.suite.parts if self.suite is not None else {}
        relu = getattr(parts.get("comparison"), "relu_tuples_for", None)
        divide = getattr(parts.get("truncation"), "division_tuples", None)
        keys: list[tuple] = []
        for operation, size, *divisor in operations:
            size = freeze(size)
            if operation == "relu":
                keys += relu(size) if relu is not None else ()
            elif operation in ("mul", "square"):
                keys.append(_product_key(operation, size, size, {}))
            elif operation == "divide":
                keys += divide(size, *divisor) if divide is not None else ()
            else:
                raise ValueError(f"unknown operation {operation!r} announced")
        self.expect(keys)

    def take_late(self) -> None:
        """Receive the shares owed to tuples already handed out (none by default)."""

    def _counted_fetch(self, key: tuple, device: Any) -> list[torch.Tensor]:
        """This party's shares of the next tuple for ``key`` (on ``device``), counted."""
        self.counters.calls += 1
        self.counters.tuples += tuple_elements(key)
        shares = self.fetch(key)
        if any(share is None for share in shares):  # a large product's truncation tuple comes with its c
            self.take_late()  # fills ``shares`` in place
        return [to_device(s, device) if device is not None else s for s in shares]

    def truncation_pair(self, size: Any, divisor: int, device: Any = None) -> tuple[Any, Any, Any]:
        from crypten.mpc.primitives import ArithmeticSharedTensor as AST

        shares = self._counted_fetch(("trunc", freeze(size), int(divisor)), device)
        return tuple(AST.from_shares(s, precision=0) for s in shares)

    def sign_mask(self, size: Any, device: Any = None) -> tuple[Any, Any, Any]:
        from crypten.mpc.primitives import ArithmeticSharedTensor as AST
        from crypten.mpc.primitives import BinarySharedTensor as BST

        r, negated, pairs = self._counted_fetch(("signmask", freeze(size)), device)
        return AST.from_shares(r, precision=0), BST.from_shares(negated), BST.from_shares(pairs)

    def wrap_bit_tuple(self, size: Any, device: Any = None, bits: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        word, and_share = self._counted_fetch(wrap_bit_key(size, bits), device)
        return word, and_share

    def relu_mask(self, size: Any, device: Any = None) -> list[torch.Tensor]:
        return self._counted_fetch(("relumask", freeze(size)), device)

    def install(self, crypten: Any) -> None:
        use_provider(crypten, self.provider_name, keyed_provider(crypten, self.provider_name, self))
        meter_online_tuple_use(crypten, self.counters, self._announce_product)

    def _announce_product(self, op: str, x: Any, y: Any = None, *args: Any, **kwargs: Any) -> None:
        """A product of two fixed-point sharings is truncated right after (CrypTen divides
        it by x's scale): announce its tuple with the truncation's, one request the first time."""
        truncation = self.suite.parts.get("truncation") if self.suite is not None else None
        tuples_for = getattr(truncation, "division_tuples", None)
        if args or tuples_for is None or x.encoder.scale == 1 or (y is not None and y.encoder.scale == 1):
            return
        key = _product_key(op, x.size(), None if y is None else y.size(), kwargs)
        self.expect([key, *tuples_for(tuple_layout(key)[-1][1], int(x.encoder.scale))])

    def uninstall(self, crypten: Any) -> None:
        unmeter_online_tuple_use(crypten)
        drop_provider(crypten, self.provider_name)
