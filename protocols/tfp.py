"""CrypTen's trusted first party: rank 0 derives every tuple. For tests only.

Rank 0 sees each triple in full, so it could decrypt every multiplication. Every run that
uses it warns, and the summary says so. Rank 0 draws tuples from its local PRG and shares
them with pseudo-random zero sharings, so tuples cost no communication (wrap tuples excepted:
CrypTen scatters those); the part counts requests, tuple elements and any traffic.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

import numpy as np
import torch

from protocols import carry4
from protocols.bitpack import pair_products
from protocols.comparison import relu_mask_values
from protocols.crypten_hooks import counted, drop_provider, meter_online_tuple_use, unmeter_online_tuple_use, use_provider
from protocols.parts import PartCounters, TripleSource
from protocols.registry import register_part
from protocols.share_tensors import plain
from protocols.truncation import pair_values

TFP_WARNING = (
    "protocol=tfp uses CrypTen's trusted first party: party 0 can see every triple and so "
    "every secret. It is for testing only; never use it with real data."
)
_PROVIDER_NAME = "COTRAIN_TFP"
_COUNTED = ("generate_additive_triple", "square", "generate_binary_triple", "wrap_rng", "B2A_rng")


def counting_provider(base: type, name: str, counters: PartCounters) -> Any:
    """An instance of provider class ``base`` whose tuple methods count and meter (offline)."""

    class CountingProvider(base):
        NAME = name

    for method in _COUNTED:
        setattr(CountingProvider, method,
                counted(getattr(base, method), counters, "offline", size_of=lambda self, size0, *a, **k: size0))
    return CountingProvider()


log = logging.getLogger("cotrain.protocols")


def _pair_streams(crypten: Any) -> tuple[Any, Any, int]:
    """(the stream parties 0 and 1 share, party 0's own, this rank)."""
    rank = crypten.communicator.get().get_rank()
    cpu = torch.device("cpu")
    return crypten.generators["next" if rank == 0 else "prev"][cpu], crypten.generators["local"][cpu], rank


def _two_party_streams(crypten: Any, device: Any) -> tuple[Any, Any, int] | None:
    """The streams of :func:`_pair_streams` for a tuple dealt from them (two parties, the CPU);
    None where CrypTen's own dealing applies."""
    if device is not None and torch.device(device).type != "cpu":
        return None
    if crypten.communicator.get().get_world_size() != 2:
        return None
    return _pair_streams(crypten)


def product_shape(op: str, size0: Any, size1: Any) -> tuple[int, ...] | None:
    """The shape of ``op``'s product of a ``size0`` and a ``size1`` tensor, for the ops dealt
    from the shared stream (None: another op or matmul shape, left to CrypTen's dealing)."""
    size0, size1 = tuple(size0), tuple(size1)
    if op == "mul":
        return tuple(np.broadcast_shapes(size0, size1))  # torch's imports sympy
    if op == "matmul" and len(size0) == len(size1) == 2 and size0[1] == size1[0]:
        return (size0[0], size1[1])
    return None


def two_party_products(crypten: Any, base: type) -> type:
    """CrypTen's trusted first party (``base``) dealing product triples (elementwise and
    two-dimensional matrix products), squares and binary AND triples for two parties on the
    CPU from the stream they share: party 1's shares are its next draws from it, party 0
    draws the same and its own shares of the factors, and takes the product's share as the
    product of the sums less party 1's (c0 = (a0 + a1)(b0 + b1) - c1; XOR for AND triples),
    made in the draws' own memory. CrypTen's sharing draws two zero-sharing masks for each
    value and copies each value on the way (fresh memory that a million-element product pays
    for in page faults), and party 1 computes the product too, only to drop it. Party 1's
    shares are as uniform and as hidden from it as CrypTen's (party 0's own draws mask
    them), and party 0 sees every tuple under either."""
    from crypten.mpc.primitives import ArithmeticSharedTensor as AST
    from crypten.mpc.primitives import BinarySharedTensor as BST

    class TwoPartyProducts(base):
        def generate_additive_triple(self, size0, size1, op, device=None, *args, **kwargs):
            shape = None if args or kwargs else product_shape(op, size0, size1)
            streams = None if shape is None else _two_party_streams(crypten, device)
            if streams is None:
                return super().generate_additive_triple(size0, size1, op, device, *args, **kwargs)
            common, local, rank = streams
            if op == "mul" and tuple(size0) == tuple(size1):
                return tuple(AST.from_shares(share, precision=0) for share in same_shape_triple(common, local, rank, size0))
            a, b, c = common.ring(size0), common.ring(size1), common.ring(torch.Size(shape))
            if rank == 0:
                a0, b0 = local.ring(size0), local.ring(size1)
                if op == "mul" and a.shape == c.shape:
                    product = a.add_(a0).mul_(b.add_(b0))
                else:
                    product = getattr(torch, op)(a.add_(a0), b.add_(b0))
                a, b, c = a0, b0, product.sub_(c)
            return tuple(AST.from_shares(share, precision=0) for share in (a, b, c))

        def square(self, size, device=None):
            streams = _two_party_streams(crypten, device)
            if streams is None:
                return super().square(size, device)
            common, local, rank = streams
            r, r2 = common.ring(size), common.ring(size)
            if rank == 0:
                r0 = local.ring(size)
                r, r2 = r0, r.add_(r0).square_().sub_(r2)
            return AST.from_shares(r, precision=0), AST.from_shares(r2, precision=0)

        def generate_binary_triple(self, size0, size1, device=None):
            streams = _two_party_streams(crypten, device)
            if streams is None:
                return super().generate_binary_triple(size0, size1, device)
            common, local, rank = streams
            a, b = common.ring(size0), common.ring(size1)
            c = common.ring(torch.Size(np.broadcast_shapes(tuple(size0), tuple(size1))))
            if rank == 0:
                a0, b0 = local.ring(size0), local.ring(size1)
                a, b, c = a0, b0, torch.bitwise_and(a.bitwise_xor_(a0), b.bitwise_xor_(b0)).bitwise_xor_(c)
            return tuple(BST.from_shares(share) for share in (a, b, c))

    return TwoPartyProducts


def same_shape_triple(common: Any, local: Any, rank: int, size: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An elementwise triple's shares for operands of one shape, in the fewest fresh tensors:
    the same draws in the same order as two_party_products' general case (so the same words),
    a and b in one (2, ...) block (the Beaver product opens them in place), and party 0's
    c0 = (a0 + a1)(b0 + b1) - c1 made over a1 with c1 drawn over b1, which is spent by then:
    four tensors live at its peak, not six."""
    if rank != 0:
        ab = common.ring((2, *size))
        return ab[0], ab[1], common.ring(size)
    a1, b1 = common.ring(size), common.ring(size)
    ab0 = local.ring((2, *size))
    product = a1.add_(ab0[0]).mul_(b1.add_(ab0[1]))
    return ab0[0], ab0[1], product.sub_(common.fill(b1))


@register_part("triple_source", "tfp")
class TrustedFirstParty(TripleSource):
    testing_only = True

    def install(self, crypten: Any) -> None:
        log.warning(TFP_WARNING)
        self._crypten = crypten
        provider = counting_provider(two_party_products(crypten, crypten.mpc.provider.TrustedFirstParty),
                                     _PROVIDER_NAME, self.counters)
        use_provider(crypten, _PROVIDER_NAME, provider)
        meter_online_tuple_use(crypten, self.counters)

    def uninstall(self, crypten: Any) -> None:
        unmeter_online_tuple_use(crypten)
        drop_provider(crypten, _PROVIDER_NAME)

    def truncation_pair(self, size: Any, divisor: int, device: Any = None) -> tuple[Any, Any, Any]:
        from crypten.common.rng import generate_random_ring_element

        AST = self._crypten.mpc.primitives.ArithmeticSharedTensor
        self.counters.calls += 1
        self.counters.tuples += int(torch.Size(size).numel())
        r = plain(generate_random_ring_element(size, device=device))
        stacked = AST(torch.stack(pair_values(r, divisor)), precision=0, src=0)
        return stacked[0], stacked[1], stacked[2]

    def sign_mask(self, size: Any, device: Any = None) -> tuple[Any, Any, Any]:
        from crypten.common.rng import generate_random_ring_element

        self.counters.calls += 1
        self.counters.tuples += 3 * int(torch.Size(size).numel())
        r = plain(generate_random_ring_element(size, device=device))
        mpc = self._crypten.mpc.primitives
        words = mpc.BinarySharedTensor(torch.stack([-r, pair_products(-r)]), src=0)
        return mpc.ArithmeticSharedTensor(r, precision=0, src=0), words[0], words[1]

    def _shares(self, make: Callable[[], torch.Tensor], shape: tuple[int, ...], binary: bool,
                device: Any) -> torch.Tensor:
        """This party's share of the tensor ``make()`` (of ``shape``) that party 0 deals. Two
        parties on the CPU: party 1's shares are the next draws from the stream it shares with
        party 0, party 0's the values less them (XOR for a binary sharing), and only party 0
        calls ``make``. Otherwise CrypTen's sharing from party 0 (two zero-sharing masks)."""
        streams = _two_party_streams(self._crypten, device)
        if streams is None:
            mpc = self._crypten.mpc.primitives
            values = make()
            return plain((mpc.BinarySharedTensor(values, src=0) if binary
                          else mpc.ArithmeticSharedTensor(values, precision=0, src=0)).share)
        common, _, rank = streams
        drawn = common.ring(torch.Size(shape))  # a Size: ring's fast path
        if rank != 0:
            return drawn
        values = make()  # a fresh stack: its memory becomes the share
        return values.bitwise_xor_(drawn) if binary else values.sub_(drawn)

    def relu_mask(self, size: Any, device: Any = None) -> list[torch.Tensor]:
        from crypten.common.rng import generate_kbit_random_tensor, generate_random_ring_element

        self.counters.calls += 1
        self.counters.tuples += 8 * int(torch.Size(size).numel())
        size = tuple(size)

        @functools.cache  # made once for both stacks (by party 0 alone where it deals from the stream)
        def values() -> list[torch.Tensor]:
            r, a = plain(generate_random_ring_element((2, *size), device=device))
            u = plain(generate_kbit_random_tensor(size, bitlength=1, device=device))
            components = relu_mask_values(r, a, u)
            components[0], components[6] = r, a
            return components

        arithmetic = self._shares(lambda: torch.stack([values()[i] for i in (0, 3, 5, 6, 7)]), (5, *size), False,
                                  device)
        binary = self._shares(lambda: torch.stack([values()[i] for i in (1, 2, 4)]), (3, *size), True, device)
        return [arithmetic[0], binary[0], binary[1], arithmetic[1], binary[2], arithmetic[2], arithmetic[3], arithmetic[4]]

    def carry4_tuple(self, size: Any, device: Any = None) -> list[torch.Tensor]:
        from crypten.common.rng import generate_random_ring_element

        self.counters.calls += 1
        self.counters.tuples += carry4.COMPONENTS * int(torch.Size(size).numel())
        size = tuple(size)

        def values() -> torch.Tensor:
            return carry4.carry4_stack(plain(generate_random_ring_element((carry4.INPUTS, *size), device=device)))

        return list(self._shares(values, (carry4.COMPONENTS, *size), True, device).unbind(0))

    def wrap_bit_tuple(self, size: Any, device: Any = None, bits: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Party 1's word and its share of the AND from the stream it shares with party 0,
        party 0's word from its own; party 0 (it sees both words, as it sees every tuple)
        takes the AND of their top bits minus party 1's share (exact in all 64 bits)."""
        self.counters.calls += 1
        self.counters.tuples += 2 * int(torch.Size(size).numel())
        common, local, rank = _pair_streams(self._crypten)
        # both in one read (the same bytes as two): one per division, eight a W5 step
        both = common.ring(torch.Size((2, *size)), device)  # a Size: ring's fast path
        partner_word, and_share = both[0], both[1]  # indexed, not unpacked (Tensor.__iter__ is Python)
        if rank != 0:
            return partner_word, and_share
        own_word = local.ring(size, device)
        # the AND of the two top bits is the top bit of the words' AND: shifted down
        # arithmetically it is 0 or -1, in the partner word's memory (no bool temporaries)
        top_and = partner_word.bitwise_and_(own_word).bitwise_right_shift_(63)
        return own_word, and_share.neg_().sub_(top_and)

    def describe(self) -> str:
        return "tfp (trusted first party, TESTING ONLY)"
