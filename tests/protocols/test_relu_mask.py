"""The packed ReLU (a comparison whose mask makes the product with its bit local) against
the exact x [x > 0] and grad [x > 0] over the whole ring, every party in its own thread with
ReLU masks from the real dealer's answers; and what a dealer's lie in a mask does."""

from __future__ import annotations

import threading

import pytest
import torch

from protocols.comparison import relu_gradient_shares, relu_shares, relu_tuples
from protocols.dealer import SemiHonestMaker, expand
from protocols.prg import CipherGenerator, new_seed
from test_packed_comparison import IdealAnd, _ring_values

SHARE_BOUND = 1 << 62


class ThreadComm:
    """The parties' all_reduce (sum, or XOR for ``op=ReduceOp.BXOR``), each party a thread."""

    def __init__(self, parties: int) -> None:
        self.parties, self.inputs, self.result, self.rounds = parties, {}, None, 0
        self.barrier = threading.Barrier(parties, action=self._combine)
        self.taken = threading.Barrier(parties)

    def _combine(self) -> None:
        tensors, op = zip(*self.inputs.values())
        total = tensors[0]
        for tensor in tensors[1:]:
            total = total ^ tensor if op[0] is not None else total + tensor
        self.result, self.rounds = total, self.rounds + 1

    def for_party(self, rank: int):
        comm = self

        class Party:
            def get_rank(self) -> int:
                return rank

            def all_reduce(self, tensor: torch.Tensor, op=None) -> torch.Tensor:
                comm.inputs[rank] = (tensor, op)
                comm.barrier.wait(timeout=60)
                result = comm.result
                comm.taken.wait(timeout=60)  # everyone has it before the next round replaces it
                return result

        return Party()


def _masks(values: torch.Tensor, parties: int, lie=None) -> list[list[torch.Tensor]]:
    """Each party's ReLU mask for ``values``' shape from the semi-honest dealer's answer;
    ``lie(component, shares)`` may alter party 0's shares (a lying dealer)."""
    maker = SemiHonestMaker(parties)
    keys = list(relu_tuples(tuple(values.shape)))[:1]
    answers = maker.deal(keys)
    masks = [expand(keys, maker.seeds[p], answers[p], p, parties)[0] for p in range(parties)]
    if lie is not None:
        lie(masks[0])
    return masks


def _run(values: torch.Tensor, grad: torch.Tensor, parties: int, lie=None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """relu(values) and grad [values > 0] opened, each party in a thread; and the rounds."""
    rng, gates, comm = CipherGenerator(new_seed()), IdealAnd(parties), ThreadComm(parties)
    masks = _masks(values, parties, lie)
    x_shares = [rng.ring(values.shape) for _ in range(parties - 1)]
    x_shares.insert(0, values - sum(x_shares))
    g_shares = [rng.ring(values.shape) for _ in range(parties - 1)]
    g_shares.insert(0, grad - sum(g_shares))
    outputs: list = [None] * parties

    def party(rank: int) -> None:
        link = comm.for_party(rank)
        relu, z = relu_shares(x_shares[rank], masks[rank], link, gates.for_party(rank))
        outputs[rank] = (relu, relu_gradient_shares(g_shares[rank], z, masks[rank], link))

    threads = [threading.Thread(target=party, args=(rank,)) for rank in range(parties)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return sum(o[0] for o in outputs), sum(o[1] for o in outputs), comm.rounds + gates.rounds


def _values() -> torch.Tensor:
    # -2^63 is its own negation: x > 0 is taken as -x < 0, as CrypTen's autograd ReLU takes it
    values = _ring_values()
    return values[values != -(1 << 63)]


@pytest.mark.parametrize("parties", [2, 3])
def test_packed_relu_and_its_gradient_are_exact_over_the_ring(parties):
    values = _values()
    grad = CipherGenerator(new_seed()).ring(values.shape)
    relu, gradient, rounds = _run(values, grad, parties)
    positive = values > 0
    assert torch.equal(relu, torch.where(positive, values, 0))
    assert torch.equal(gradient, torch.where(positive, grad, 0))
    # the opening of -x + r, five AND levels, the bit's opening; the gradient's one opening
    assert rounds == 8


@pytest.mark.parametrize("component, what", [(5, "relu"), (7, "gradient")])
def test_a_lie_in_a_relu_mask_moves_only_the_elements_lied_about_by_what_was_added(component, what):
    """A dealer that adds e to r u (or to a u) in some elements (semi-honest: not detected,
    see SECURITY.md) moves relu(x) (or the gradient) of exactly those elements, by e or -e
    (the sign of 1 - 2z, z the opened bit: random), and leaves every other element exact."""
    values = _values()
    grad = CipherGenerator(new_seed()).ring(values.shape)
    lied = torch.arange(values.numel()) % 3 == 0
    error = 1 << 20

    def lie(shares: list[torch.Tensor]) -> None:
        shares[component] = shares[component] + lied.long() * error

    relu, gradient, _ = _run(values, grad, 2, lie)
    positive = values > 0
    exact = torch.where(positive, values, 0) if what == "relu" else torch.where(positive, grad, 0)
    got = relu if what == "relu" else gradient
    assert torch.equal(got[~lied], exact[~lied])
    assert torch.equal((got[lied] - exact[lied]).abs(), torch.full_like(exact[lied], error))
